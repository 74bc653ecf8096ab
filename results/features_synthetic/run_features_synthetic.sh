#!/usr/bin/env bash
# Issue 36: PaDiM and PatchCore on synthetic parts (masks known), the data of ../head_synthetic/ (32 px, seed 0),
# and the same washers drawn at 128 px, where a stride-8 feature grid is 16 x 16 rather than 4 x 4. One thread.
set -eu
out=${1:-/root/runs/features_synthetic}
export WANDB_MODE=disabled OMP_NUM_THREADS=1
for size in 32 128; do
  .venv/bin/python -m fned_lightning.train -m logger=csv data=synthetic data.image_size=$size seed=0 "model=padim,patchcore" \
    hydra.sweep.dir="$out" "hydra.sweep.subdir=\${hydra.runtime.choices.model}_${size}px"
done
