#!/usr/bin/env bash
# Make what the Table 1 sweep needs on this machine, skipping what is there already: the worktree at 7f7fb11 with its
# environment, CIFAR-10 unpacked, and each finished run committed under results/cifar10_table1/ copied into the sweep
# directory (with a RESTORED.txt), so that the multirun skips it instead of training it again. run_table1.sh calls it.
# Each step lands whole or not at all (a stamp, or a move into place), so a setup cut short is finished by the next.
#   SWEEP=/root/sweep bash results/cifar10_table1/setup_table1.sh
set -euo pipefail
main=$(cd "$(dirname "$0")/../.." && pwd)  # the checkout this script is in
sweep=${SWEEP:-/root/sweep}
worktree="$sweep/fned_7f7fb11"
tarball="$main/../shared/datasets/cifar10-jpeg.tar.gz"
fail() { echo "setup_table1.sh: $*" >&2; exit 2; }

if ! git -C "$worktree" rev-parse --git-dir > /dev/null 2>&1; then
  [ ! -e "$worktree" ] || fail "$worktree exists but is not a git worktree; remove it (rm -rf $worktree) and start again"
  git -C "$main" worktree prune  # a worktree lost with an earlier machine blocks adding it again
  git -C "$main" worktree add --detach "$worktree" 7f7fb11 > /dev/null 2>&1 \
    || fail "git worktree add --detach $worktree 7f7fb11 failed in $main; run it by hand to see why"
fi
make -C "$worktree" install > "$sweep/install.log" 2>&1 \
  || fail "make install failed in $worktree; see $sweep/install.log"  # a no-op once it has succeeded

if [ ! -f "$sweep/data/cifar10/.unpacked" ]; then
  [ -f "$tarball" ] || fail "no CIFAR-10 at $tarball; the sweep reads ../shared/datasets/ beside the checkout"
  rm -rf "$sweep/data/cifar10"
  mkdir -p "$sweep/data/cifar10"
  tar -xzf "$tarball" -C "$sweep/data/cifar10" 2> "$sweep/untar.log" || fail "unpacking $tarball failed; see $sweep/untar.log"
  touch "$sweep/data/cifar10/.unpacked"
fi

for kept in "$main"/results/cifar10_table1/*_seed0/metrics.json; do
  [ -f "$kept" ] || continue
  run=$(dirname "$kept")
  name=$(basename "$run")  # <job>_<model>_<class>_seed0 (conf/train.yaml); a model's name may hold "_", a class's not
  [[ $name =~ ^[0-9]+_(fned|skip_ganomaly|ganomaly)_[a-z]+_seed0$ ]] \
    || fail "results/cifar10_table1/$name is not a sweep run's folder (<job>_<model>_<class>_seed0); rename or remove it"
  target="$sweep/multirun/cifar10_table1_${BASH_REMATCH[1]}/$name"
  [ -e "$target" ] && continue  # the sweep's own folder (finished, or running) is never replaced
  mkdir -p "$(dirname "$target")"
  rm -rf "$target.partial"
  cp -r "$run" "$target.partial"
  echo "restored $(date -u +%FT%TZ) from results/cifar10_table1/$name (the committed, finished run)" > "$target.partial/RESTORED.txt"
  mv "$target.partial" "$target"
  echo "setup_table1.sh: restored $name into $(dirname "$target")"
done
