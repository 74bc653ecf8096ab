#!/usr/bin/env bash
# The paper's full protocol for all ten CIFAR-10 classes on one GPU, one run after another, then
# the tables. Prints the wall time.
#   scripts/paper_on_one_gpu.sh /path/to/cifar10 [extra Hydra overrides...]
#   MODELS="fned ganomaly skip_ganomaly fanogan" scripts/paper_on_one_gpu.sh /path/to/cifar10
set -euo pipefail
data=${1:?usage: $0 /path/to/cifar10 [overrides...]}
shift
python=${PYTHON:-python}
sweep=${SWEEP_DIR:-multirun/paper_one_gpu_$(date +%Y-%m-%d_%H-%M-%S)}
models=$(echo "${MODELS:-fned}" | tr ' ' ',')
start=$(date +%s)
"$python" -m fned_lightning.train -m experiment=cifar10_gpu "data.root=$data" "model=$models" \
    "hydra.sweep.dir=$sweep" "$@" || echo "some runs failed: see $sweep/*/failed.txt"
echo "wall time: $(( $(date +%s) - start )) s for models ${models} in $sweep"
"$python" -m fned_lightning.report "$sweep" --wandb off
