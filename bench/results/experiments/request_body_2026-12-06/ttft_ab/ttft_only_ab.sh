#!/bin/bash
# ttft_only.py (40 sequential runs on one tier) in two checkouts, alternating.
#   AB=<dir holding the two worktrees> PYTHON=<venv python> ./ttft_only_ab.sh OUT ROUNDS TIER
OUT=$1; ROUNDS=$2; TIER=$3
HERE=$(cd "$(dirname "$0")" && pwd)
for r in $(seq 1 "$ROUNDS"); do
  for v in before after; do
    (cd "$AB/$v" && echo "$v $(timeout 600 "$PYTHON" "$HERE/ttft_only.py" "$TIER" 40 2>/dev/null | tail -n 1)") >> "$OUT"
  done
done
