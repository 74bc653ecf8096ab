#!/usr/bin/env bash
# Issue 36: PaDiM and PatchCore on the fastener set, each setting x size x seed a run of its own (so that its
# peak memory is its own), one thread, beside the Table 1 sweep. Given again, finished runs are skipped.
#   bash results/parts_pretrained/run_parts_pretrained.sh /root/runs/parts_pretrained
set -u
out=${1:-/root/runs/parts_pretrained}
export WANDB_MODE=disabled OMP_NUM_THREADS=1
common="data=folder data.root=$(realpath ../shared/datasets/mvtec_screw) data.channels=1 data.intensity=per_image data.val_defects=10 data.batch_size=16 logger=csv"
for size in 224 256; do
  for seed in 0 1 2; do
    for setting in "padim model.neighbourhood=1" "padim model.neighbourhood=3" "patchcore model.coreset_ratio=0.01" "patchcore model.coreset_ratio=0.1"; do
      set -- $setting
      name="$1_$(echo "${2#model.}" | tr = _)_${size}px_seed$seed"
      [ -f "$out/$name/metrics.json" ] && continue
      mkdir -p "$out/$name"
      /usr/bin/time -f "wall_s %e peak_rss_kb %M" -o "$out/$name/time.txt" \
        .venv/bin/python -m fned_lightning.train model=$1 $2 $common data.image_size=$size seed=$seed hydra.run.dir="$out/$name" \
        > "$out/$name/stdout.txt" 2>&1
    done
  done
done
