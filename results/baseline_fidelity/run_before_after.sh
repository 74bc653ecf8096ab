#!/bin/bash
# before/after on an otherwise idle machine: screw_cpu sweeps, then make bench alternating twice
PY=/work/main/.venv/bin/python
export WANDB_MODE=disabled
for side in before after; do
  cd /work/$side
  s=$(date +%s)
  $PY -m fned_lightning.train -m experiment=screw_cpu data.root=../shared/datasets/mvtec_screw hydra.sweep.dir=/work/meas/${side}_screw2 > /work/meas/${side}_screw2.log 2>&1
  echo "$side screw_cpu wall $(( $(date +%s) - s )) s" >> /work/meas/walls.txt
done
for i in 1 2; do
  for side in before after; do
    cd /work/$side
    $PY -m fned_lightning.bench --out /work/meas/${side}_bench$i.json > /work/meas/${side}_bench$i.log 2>&1
    echo "$side bench$i done $(date)" >> /work/meas/walls.txt
  done
done
