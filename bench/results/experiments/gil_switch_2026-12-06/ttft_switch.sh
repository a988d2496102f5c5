#!/bin/bash
# bench.ttft_overhead (both tiers, 20 runs, then the 50-user burst) with each process's GIL
# switch interval at each value given, alternating, from a checkout whose settings read
# GIL_SWITCH_S (the experiment's one-line patch; see README.md):
#   CHECKOUT=<dir> PYTHON=<venv python> ./ttft_switch.sh OUT ROUNDS 0.005 0.001 ...
OUT=$1; ROUNDS=$2; shift 2
for r in $(seq 1 "$ROUNDS"); do
  for s in "$@"; do
    mkdir -p "$OUT/$s-$r"
    (cd "$CHECKOUT" && GIL_SWITCH_S=$s timeout 900 "$PYTHON" -m bench.ttft_overhead --tier both \
      --runs 20 --results "$OUT/$s-$r" > "$OUT/$s-$r/log" 2>&1)
  done
done
