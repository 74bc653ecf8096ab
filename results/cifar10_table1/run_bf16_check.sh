#!/usr/bin/env bash
# Does bf16-mixed precision measure what float32 measures? FNED bird trained again exactly as the sweep trained it
# (same worktree at 7f7fb11, same command) but with trainer.precision=bf16-mixed, on a CPU with bf16 instructions,
# to compare with the float32 run in 1_fned_bird_seed0/ before bf16 is used for any row (issue 35).
# Given again, it resumes from its last checkpoint. It needs the sweep's setup (run_table1.sh makes it).
#   mkdir -p /root/sweep && nohup setsid bash results/cifar10_table1/run_bf16_check.sh >> /root/sweep/bf16_check.log 2>&1 < /dev/null &
set -e
exec 9> /root/sweep/bf16_check.lock
flock -n 9 || { echo "run_bf16_check.sh: the check is running already (it holds /root/sweep/bf16_check.lock)" >&2; exit 2; }
grep -qw avx512_bf16 /proc/cpuinfo \
  || { echo "run_bf16_check.sh: this CPU has no avx512_bf16 instructions, where bf16 runs ~15x slower (speed_settings.txt)" >&2; exit 2; }
[ -x /root/sweep/fned_7f7fb11/.venv/bin/python ] || { echo "run_bf16_check.sh: no /root/sweep/fned_7f7fb11; run run_table1.sh once to set it up" >&2; exit 2; }
cd /root/sweep/fned_7f7fb11
echo "start $(date -u +%FT%TZ) cpu family $(lscpu | sed -n 's/^CPU family: *//p') model $(lscpu | sed -n 's/^Model: *//p') commit $(git rev-parse --short HEAD) up since $(uptime -s)" >> /root/sweep/bf16_check_sessions.log
export WANDB_MODE=disabled OMP_WAIT_POLICY=PASSIVE
nice -n 19 .venv/bin/python -m fned_lightning.train -m experiment=cifar10_cpu data.root=/root/sweep/data/cifar10 \
  model=fned anomaly_class=bird seed=0 protocol=both trainer.max_epochs=15 trainer.limit_train_batches=1.0 \
  trainer.limit_val_batches=1.0 trainer.limit_test_batches=1.0 trainer.precision=bf16-mixed \
  hydra.sweep.dir=/root/sweep/multirun/cifar10_table1_fned_bf16
