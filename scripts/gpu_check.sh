#!/usr/bin/env bash
# The GPU checks as one prepared command, in under 4 minutes on one GPU (issue 37): the gpu-marked tests
# (every output on the device, float32 maps under bf16, one optimiser step per G/D call, no host waits in a
# training step, compile, predict/export), one short training of every model with experiment=gpu, and one
# protocol=both run. Writes at most three small files to $OUT: summary.txt (one line a check, PASS or FAIL,
# and the total), failures.txt (the tail of each failed check's log) and protocol_both_metrics.json; run
# folders stay in $WORK. Each check's time limit is cut to what is left of BUDGET_S (default 235 s), so the
# whole stays under 4 minutes. Exit 0 only if every check passed.
#   scripts/gpu_check.sh                                  # synthetic parts: needs no data
#   scripts/gpu_check.sh /path/to/cifar10                 # the protocol=both run on CIFAR-10 (or its .tar.gz)
#   OUT=results/gpu_check WORK=/tmp/gpu_check PYTHON=.venv/bin/python scripts/gpu_check.sh
#   ACCELERATOR=cpu scripts/gpu_check.sh                  # the script itself, on a machine without a GPU
set -uo pipefail
data=${1:-}
python=${PYTHON:-python3}
accelerator=${ACCELERATOR:-gpu}
budget=${BUDGET_S:-235}
out=${OUT:-results/gpu_check}
work=${WORK:-/tmp/gpu_check}
mkdir -p "$out" "$work"
rm -f "$out/summary.txt" "$out/failures.txt" "$out/protocol_both_metrics.json"
start=$(date +%s)
failed=0
export WANDB_MODE=disabled

say() { echo "$*" | tee -a "$out/summary.txt"; }
check() {  # check NAME LIMIT_S COMMAND...: PASS/FAIL and seconds; a failure's log tail goes to failures.txt
  local name=$1 limit=$2 t0 rc left
  shift 2
  left=$(( budget - ($(date +%s) - start) ))
  (( limit > left )) && limit=$(( left > 1 ? left : 1 ))
  t0=$(date +%s)
  timeout "$limit" "$@" > "$work/$name.log" 2>&1
  rc=$?
  if [ $rc -eq 0 ]; then say "PASS $name ($(( $(date +%s) - t0 )) s)"; else
    failed=1
    say "FAIL $name: exit $rc after $(( $(date +%s) - t0 )) s (its log's tail: $out/failures.txt)"
    { echo "== $name (exit $rc; 124: out of time)"; tail -n 40 "$work/$name.log"; } >> "$out/failures.txt"
  fi
}

"$python" -c "import sys, torch, lightning, platform; gpu = sys.argv[1] == 'gpu'; \
assert torch.cuda.is_available() or not gpu, 'no CUDA GPU visible to torch'; \
print('device', torch.cuda.get_device_name() if gpu else platform.processor() or 'cpu', '| torch', torch.__version__, \
'| cuda', torch.version.cuda, '| lightning', lightning.__version__)" "$accelerator" > "$work/device.txt" 2>&1 \
  || { cat "$work/device.txt"; say "FAIL: no GPU"; exit 1; }
say "gpu_check $(date -u +%FT%TZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown), $(cat "$work/device.txt")"

check gpu_tests 120 "$python" -m pytest -q -m gpu tests
tail -n 1 "$work/gpu_tests.log" | tee -a "$out/summary.txt"

tiny=(data=synthetic data.n_train=256 data.n_test_normal=32 data.n_test_abnormal=32 data.batch_size=32
  data.eval_batch_size=64 logger=csv experiment=gpu "trainer.accelerator=$accelerator")
for model in $(ls conf/model | sed 's/\.yaml$//'); do  # every model config
  epochs=$([ "$model" = fanogan ] && echo 2 || echo 1)
  check "train_$model" 30 "$python" -m fned_lightning.train "${tiny[@]}" "model=$model" "trainer.max_epochs=$epochs" \
    "hydra.run.dir=$work/train_$model"
  [ -f "$work/train_$model/metrics.json" ] && "$python" -c "import json, sys; m = json.load(open(sys.argv[1])); \
print(f\"  {sys.argv[2]}: auroc {m['auroc']}, train {m.get('train_images_per_s', 0):.0f} img/s, \
test {m['test_images_per_s']:.0f} img/s\")" "$work/train_$model/metrics.json" "$model" | tee -a "$out/summary.txt"
done

if [ -n "$data" ]; then  # FNED on CIFAR-10 (horse), a few hundred batches, both protocols from one run
  if [[ "$data" == *.tar.gz ]]; then mkdir -p "$work/cifar10" && tar -xzf "$data" -C "$work/cifar10" && data="$work/cifar10"; fi
  both=(experiment=gpu "trainer.accelerator=$accelerator" anomaly_class=horse "data.root=$data" data.cache_dir=null
    trainer.max_epochs=2 trainer.limit_train_batches=100 logger=csv)
else
  both=("${tiny[@]}" trainer.max_epochs=2)
fi
check protocol_both 60 "$python" -m fned_lightning.train "${both[@]}" protocol=both "hydra.run.dir=$work/protocol_both"
[ -f "$work/protocol_both/metrics.json" ] && cp "$work/protocol_both/metrics.json" "$out/protocol_both_metrics.json"

say "total $(( $(date +%s) - start )) s; $([ $failed = 0 ] && echo 'every check passed' || echo 'some checks FAILED')"
exit $failed
