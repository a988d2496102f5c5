#!/bin/bash
# bench.capacity (ours only, steps 50 and 200) in two checkouts, alternating, the order
# swapped after round 2: AB/before (asyncio's loop), AB/after (uvloop's).
#   AB=<dir holding the two worktrees> PYTHON=<venv python> ./cap_ab.sh OUT ROUNDS
OUT=$1; ROUNDS=$2
for r in $(seq 1 "$ROUNDS"); do
  if [ "$r" -le 2 ]; then order="before after"; else order="after before"; fi
  for v in $order; do
    mkdir -p "$OUT/$v-$r"
    (cd "$AB/$v" && timeout 900 "$PYTHON" -m bench.capacity --systems ours --steps 50,200 \
      --results "$OUT/$v-$r" > "$OUT/$v-$r/log" 2>&1)
  done
done
