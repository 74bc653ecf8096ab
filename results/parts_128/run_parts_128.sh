#!/usr/bin/env bash
# Issue 19's 128 px follow-up alone (the synthetic half of run_followup.sh is done and kept): the chosen setting
# ($1) on the fastener set, seeds 0-2, one after another, from the worktree at commit 92ce418. Same command resumes.
chosen=${1:?usage: run_parts_128.sh EXPERIMENT}
cd /root/sweep/parts_92ce418
export PYTHONPATH=$PWD WANDB_MODE=disabled OMP_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE
nice -n 19 /work/main/.venv/bin/python -m fned_lightning.train -m logger=csv experiment=$chosen \
  data.root=/work/shared/datasets/mvtec_screw data.image_size=128 data.val_defects=10 \
  data.synthetic_val_defects=true trainer.max_epochs=15 seed=0,1,2 hydra.sweep.dir=/root/sweep/multirun/parts_128 \
  'hydra.sweep.subdir=${hydra.runtime.choices.experiment}_seed${seed}'
