#!/usr/bin/env bash
# Make what the Table 1 sweep needs on this machine, skipping what is there already: the worktree at 7f7fb11 with its
# environment, CIFAR-10 unpacked, and each finished run committed under results/cifar10_table1/ copied into the sweep
# directory (with a RESTORED.txt), so that the multirun skips it instead of training it again. run_table1.sh calls it.
#   SWEEP=/root/sweep bash results/cifar10_table1/setup_table1.sh
set -euo pipefail
main=$(cd "$(dirname "$0")/../.." && pwd)  # the checkout this script is in
sweep=${SWEEP:-/root/sweep}
tarball="$main/../shared/datasets/cifar10-jpeg.tar.gz"
if [ ! -d "$sweep/fned_7f7fb11" ]; then
  git -C "$main" worktree prune  # a worktree lost with an earlier machine blocks adding it again
  git -C "$main" worktree add --detach "$sweep/fned_7f7fb11" 7f7fb11
  (cd "$sweep/fned_7f7fb11" && make install > "$sweep/install.log" 2>&1) \
    || { echo "setup_table1.sh: make install failed in $sweep/fned_7f7fb11; see $sweep/install.log" >&2; exit 2; }
fi
if [ ! -d "$sweep/data/cifar10/test" ]; then
  [ -f "$tarball" ] || { echo "setup_table1.sh: no CIFAR-10 at $tarball; the sweep reads ../shared/datasets/ beside the checkout" >&2; exit 2; }
  mkdir -p "$sweep/data/cifar10"
  tar -xzf "$tarball" -C "$sweep/data/cifar10"
fi
for kept in "$main"/results/cifar10_table1/*_seed0/metrics.json; do
  [ -f "$kept" ] || continue
  run=$(dirname "$kept")
  name=$(basename "$run")       # <job>_<model>_<class>_seed0; a model's name may hold "_", a class's does not
  model=${name#*_}
  model=${model%_*_seed0}
  target="$sweep/multirun/cifar10_table1_$model/$name"
  [ -e "$target" ] && continue  # the sweep's own folder (finished, or running) is never replaced
  mkdir -p "$(dirname "$target")"
  cp -r "$run" "$target"
  echo "restored $(date -u +%FT%TZ) from results/cifar10_table1/$name (the committed, finished run)" > "$target/RESTORED.txt"
  echo "setup_table1.sh: restored $name into $(dirname "$target")"
done
