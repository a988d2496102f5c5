#!/bin/bash
# bench.ttft_overhead (both tiers, 20 runs) in two checkouts, alternating: AB/before, AB/after.
#   AB=<dir holding the two worktrees> PYTHON=<venv python> ./ttft_ab.sh OUT ROUNDS
OUT=$1; ROUNDS=$2
mkdir -p "$OUT"
for r in $(seq 1 "$ROUNDS"); do
  for v in before after; do
    mkdir -p "$OUT/$v-$r"
    (cd "$AB/$v" && timeout 900 "$PYTHON" -m bench.ttft_overhead --tier both --runs 20 \
      --results "$OUT/$v-$r" > "$OUT/$v-$r/log" 2>&1)
  done
done
