#!/usr/bin/env bash
# Table 1 whole (issue 35): FNED on the eight CIFAR-10 classes not yet run at the paper's budget, then the
# baselines, from a worktree at a fixed commit (7f7fb11: protocol=both tests the paper's protocol in the
# anchors' batches). Given again, it resumes: finished runs are kept, the others go on from their last checkpoint.
# On a new machine it first makes the worktree, the data and the finished runs' folders (setup_table1.sh).
#   mkdir -p /root/sweep && nohup setsid bash results/cifar10_table1/run_table1.sh >> /root/sweep/table1.log 2>&1 < /dev/null &
set -e
mkdir -p /root/sweep
exec 9> /root/sweep/table1.lock  # held by this shell and its trainers (they inherit it) until the sweep stops
flock -n 9 || { echo "run_table1.sh: the sweep is running already (it holds /root/sweep/table1.lock); one at a time" >&2; exit 2; }
SWEEP=/root/sweep bash "$(dirname "$0")/setup_table1.sh"
cd /root/sweep/fned_7f7fb11
[ "$(git rev-parse HEAD)" = "$(git rev-parse '7f7fb11^{commit}')" ] || { echo "run_table1.sh: /root/sweep/fned_7f7fb11 is not at 7f7fb11; run: git -C /root/sweep/fned_7f7fb11 checkout --detach 7f7fb11" >&2; exit 2; }
echo "start $(date -u +%FT%TZ) host $(hostname) cpu '$(lscpu | sed -n 's/^Model name: *//p')' family $(lscpu | sed -n 's/^CPU family: *//p') model $(lscpu | sed -n 's/^Model: *//p') cores $(nproc) commit $(git rev-parse --short HEAD) up since $(uptime -s)" >> /root/sweep/table1_sessions.log
export WANDB_MODE=disabled
export OMP_WAIT_POLICY=PASSIVE  # waiting threads sleep: the sweep shares 2 cores with other work
classes=automobile,bird,cat,deer,dog,frog,ship,truck  # order fixed: a run's folder is named by its place in it
budget="seed=0 protocol=both trainer.max_epochs=15 trainer.limit_train_batches=1.0 trainer.limit_val_batches=1.0 trainer.limit_test_batches=1.0"
for model in fned skip_ganomaly ganomaly; do  # FNED first: the issue closes on its eight rows
  nice -n 19 .venv/bin/python -m fned_lightning.train -m experiment=cifar10_cpu data.root=/root/sweep/data/cifar10 \
    model=$model "anomaly_class=$classes" $budget hydra.sweep.dir=/root/sweep/multirun/cifar10_table1_$model
done
