#!/usr/bin/env bash
# Once seed 0 of the 128 px runs is done: seeds 1 and 2 side by side (one core each), the CIFAR sweep paused
# meanwhile (SIGSTOP changes no number), then resumed. Same settings and sweep folder as run_parts_128.sh.
sweep=/root/sweep/multirun/parts_128
until [ -d $sweep/screw_seed1 ]; do sleep 20; done   # the sequential multirun finished seed 0 and moved on
pkill -f "hydra.sweep.dir=/root/sweep/multirun/parts_128"; sleep 10
cifar=$(pgrep -f "experiment=cifar10_cpu")
kill -STOP $cifar; echo "$(date -u +%FT%T) SIGSTOP CIFAR sweep ($cifar): 128 px seeds 1 and 2 side by side" >> /root/sweep/sweep_times.log
cd /root/sweep/parts_92ce418
export PYTHONPATH=$PWD WANDB_MODE=disabled OMP_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE
for seed in 1 2; do
  nice -n 19 /work/main/.venv/bin/python -m fned_lightning.train -m logger=csv experiment=screw \
    data.root=/work/shared/datasets/mvtec_screw data.image_size=128 data.val_defects=10 \
    data.synthetic_val_defects=true trainer.max_epochs=15 seed=$seed hydra.sweep.dir=$sweep \
    'hydra.sweep.subdir=${hydra.runtime.choices.experiment}_seed${seed}' > /root/sweep/parts_128_seed$seed.log 2>&1 &
done
wait
kill -CONT $cifar; echo "$(date -u +%FT%T) SIGCONT CIFAR sweep: 128 px seeds done" >> /root/sweep/sweep_times.log
