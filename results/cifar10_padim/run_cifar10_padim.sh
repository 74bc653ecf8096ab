#!/usr/bin/env bash
# Issue 36: PaDiM on CIFAR-10's ten one-class splits, honest protocol, a reference row beside Table 1. The
# 32 px images read at 64 px (a stride-8 grid of 8 x 8 positions). One thread, beside the Table 1 sweep.
set -eu
out=${1:-/root/runs/cifar10_padim}
data=${2:-/root/sweep/data/cifar10}
export WANDB_MODE=disabled OMP_NUM_THREADS=1
.venv/bin/python -m fned_lightning.train -m model=padim data.root="$data" data.image_size=64 seed=0 logger=csv \
  "anomaly_class=airplane,automobile,bird,cat,deer,dog,frog,horse,ship,truck" hydra.sweep.dir="$out"
