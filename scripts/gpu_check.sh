#!/usr/bin/env bash
# The GPU checks as one prepared command (issue 18): the gpu-marked tests, a timed 1-epoch FNED run on
# CIFAR-10 with experiment=gpu, then as many runs of the paper's sweep (horse and plane, FNED, GANomaly,
# Skip-GANomaly, protocol=both, 15 epochs) as the time left allows. Small files only go to OUT (at most
# 8: what a lent device machine sends back); checkpoints and run folders stay in WORK.
#   scripts/gpu_check.sh /path/to/cifar10-or-its.tar.gz [budget in seconds, default 780]
#   OUT=results/gpu_check WORK=/tmp/gpu_check PYTHON=python3 scripts/gpu_check.sh data/cifar10
set -uo pipefail
data=${1:?usage: scripts/gpu_check.sh /path/to/cifar10 (or cifar10-jpeg.tar.gz) [budget_s]}
budget=${2:-780}
python=${PYTHON:-python3}
out=${OUT:-results/gpu_check}
work=${WORK:-/tmp/gpu_check}
mkdir -p "$out" "$work"
start=$(date +%s)
left() { echo $(( budget - ($(date +%s) - start) )); }
say() { echo "$*" | tee -a "$out/summary.txt"; }

if [[ "$data" == *.tar.gz ]]; then  # the copy beside a checkout, carried as it is
  mkdir -p "$work/cifar10" && tar -xzf "$data" -C "$work/cifar10" && data="$work/cifar10"
fi
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  "$python" -c "import torch, lightning; print('torch', torch.__version__, 'lightning', lightning.__version__, torch.cuda.get_device_name())"
} > "$out/gpu.txt" 2>&1
say "gpu_check $(date -u +%FT%TZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown), budget ${budget} s"

t0=$(date +%s)  # 1. the CUDA paths
WANDB_MODE=disabled timeout $(( $(left) / 4 )) "$python" -m pytest -q -m gpu tests > "$out/gpu_tests.txt" 2>&1
say "gpu tests: exit $? in $(( $(date +%s) - t0 )) s ($(tail -n 1 "$out/gpu_tests.txt"))"

t0=$(date +%s)  # 2. one epoch of FNED at the paper's widths, timed (decoding the JPEGs included)
WANDB_MODE=disabled timeout $(( $(left) / 2 )) "$python" -m fned_lightning.train experiment=gpu anomaly_class=horse \
  "data.root=$data" data.cache_dir=null trainer.max_epochs=1 logger=csv "hydra.run.dir=$work/fned_1epoch" > "$work/fned_1epoch.log" 2>&1
say "FNED, 1 epoch on CIFAR-10 (horse): exit $? in $(( $(date +%s) - t0 )) s"
[ -f "$work/fned_1epoch/metrics.json" ] && cp "$work/fned_1epoch/metrics.json" "$out/fned_1epoch_metrics.json"

t0=$(date +%s)  # 3. the paper's budget, as far as the time goes; a rerun resumes it
WANDB_MODE=disabled timeout $(( $(left) - 20 )) "$python" -m fned_lightning.train -m experiment=cifar10_gpu "data.root=$data" \
  data.cache_dir=null model=ganomaly,skip_ganomaly,fned anomaly_class=horse,airplane protocol=both \
  "hydra.sweep.dir=$work/paper_budget" > "$work/paper_budget.log" 2>&1
say "paper-budget sweep: exit $? after $(( $(date +%s) - t0 )) s; finished runs: $(ls "$work"/paper_budget/*/metrics.json 2>/dev/null | wc -l)"
tail -n 40 "$work/paper_budget.log" > "$out/paper_budget_tail.txt"
if ls "$work"/paper_budget/*/metrics.json > /dev/null 2>&1; then
  "$python" -m fned_lightning.report "$work/paper_budget" --out "$work/report" --wandb off > /dev/null 2>&1
  cp "$work/report/tables.md" "$out/paper_budget_tables.md" 2>/dev/null
fi
say "total $(( $(date +%s) - start )) s"
