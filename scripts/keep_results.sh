#!/usr/bin/env bash
# Copy what matters of a sweep's finished runs into results/<name>/ (small files only: no checkpoints)
# and regenerate its report tables there. Run again as the sweep goes on; unfinished runs are left out.
#   scripts/keep_results.sh /path/to/multirun/sweep results/screw_both
set -euo pipefail
sweep=${1:?usage: scripts/keep_results.sh SWEEP_DIR RESULTS_DIR}
dest=${2:?usage: scripts/keep_results.sh SWEEP_DIR RESULTS_DIR}
python=${PYTHON:-python}
mkdir -p "$dest"
for run in "$sweep"/*/; do
  [ -f "$run/metrics.json" ] || continue  # still running, or failed: its failed.txt stays in the sweep
  name=$(basename "$run")
  mkdir -p "$dest/$name"
  cp -r "$run/.hydra" "$run/metrics.json" "$run/config.yaml" "$run/scores.csv" "$dest/$name/"
  [ -d "$run/figures" ] && cp -r "$run/figures" "$dest/$name/"
  rm -f "$dest/$name/epochs_so_far.csv"  # a running run's log, committed while it ran: epochs.csv replaces it
  if compgen -G "$run/csv/metrics.before_resume.*.csv" > /dev/null; then  # a log cut by a resume (commit 99bb309)
    "$python" "$(dirname "$0")/merge_epoch_logs.py" "$run" "$dest/$name/epochs.csv"
  elif [ -f "$run/csv/metrics.csv" ]; then
    cp "$run/csv/metrics.csv" "$dest/$name/epochs.csv"  # per-epoch logs
  fi
done
find "$dest" -type f -size +1M -print -delete  # the repository keeps small files only
"$python" -m fned_lightning.report "$dest" --out "$dest/report" --wandb off > /dev/null
echo "kept $(ls -d "$dest"/*/metrics.json 2>/dev/null | wc -l) finished runs in $dest; tables in $dest/report/tables.md"
