#!/usr/bin/env bash
# Issue 19's follow-ups, from a worktree at commit 92ce418: (1) localisation on synthetic parts, the paper's FNED
# against FNED + the segmentation head, 32 px, 8 epochs, seed 0 (results/synthetic_localisation's settings);
# (2) the chosen setting ($1, an experiment name) at 128 px on the fastener set, seeds 0-2, one after another.
# Two processes, one core each; the same command resumes.
chosen=${1:?usage: run_followup.sh EXPERIMENT}
cd /root/sweep/parts_92ce418
export PYTHONPATH=$PWD WANDB_MODE=disabled OMP_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE
python=/work/main/.venv/bin/python
run() { nice -n 19 $python -m fned_lightning.train -m logger=csv "$@"; }
synthetic=(data=synthetic trainer.max_epochs=8 seed=0 hydra.sweep.dir=/root/sweep/multirun/head_synthetic)
( run "${synthetic[@]}" model=fned 'hydra.sweep.subdir=fned' &&
  run "${synthetic[@]}" experiment=parts_head data.image_size=32 data.batch_size=64 data.intensity=none \
      data.synthetic_val_defects=false 'hydra.sweep.subdir=fned_head' ) > /root/sweep/followup_a.log 2>&1 &
( run experiment=$chosen data.root=/work/shared/datasets/mvtec_screw data.image_size=128 data.val_defects=10 \
      data.synthetic_val_defects=true trainer.max_epochs=15 seed=0,1,2 hydra.sweep.dir=/root/sweep/multirun/parts_128 \
      'hydra.sweep.subdir=${hydra.runtime.choices.experiment}_seed${seed}' ) > /root/sweep/followup_b.log 2>&1 &
wait
