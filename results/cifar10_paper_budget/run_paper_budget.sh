#!/usr/bin/env bash
# The paper's budget sweep (issue 18), from a clone at a fixed commit (99bb309); the same command resumes it.
# That commit's CSV logger deletes a resumed run's csv/metrics.csv (fixed later, issue 21): keep a copy of
# each unfinished run's log before resuming, so that the per-epoch curves keep their first epochs.
cd /root/sweep/fned_99bb309
sweep=/root/sweep/multirun/cifar10_paper_budget
for run in "$sweep"/*/; do
  if [ -f "$run/csv/metrics.csv" ] && [ ! -f "$run/metrics.json" ]; then
    cp "$run/csv/metrics.csv" "$run/csv/metrics.before_resume.$(date -u +%Y%m%dT%H%M%S).csv"
  fi
done
export WANDB_MODE=disabled
export OMP_WAIT_POLICY=PASSIVE  # waiting threads sleep: the sweep shares 2 cores with other work
exec nice -n 19 .venv/bin/python -m fned_lightning.train -m experiment=cifar10_cpu data.root=/root/sweep/data/cifar10 \
  "model=ganomaly,skip_ganomaly,fned" "anomaly_class=horse,airplane" seed=0 protocol=both \
  trainer.max_epochs=15 trainer.limit_train_batches=1.0 trainer.limit_val_batches=1.0 trainer.limit_test_batches=1.0 \
  hydra.sweep.dir="$sweep"
