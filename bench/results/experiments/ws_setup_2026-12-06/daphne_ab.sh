#!/bin/bash
# daphne_step.py in two checkouts, alternating: AB/before, then AB/after, ROUNDS times.
#   AB=<dir holding the two worktrees> PYTHON=<venv python> [SSE_SHARE=0.2] ./daphne_ab.sh ROUNDS STREAMS TOKENS
ROUNDS=$1; STREAMS=$2; TOKENS=$3
HERE=$(cd "$(dirname "$0")" && pwd)
for r in $(seq 1 "$ROUNDS"); do
  for v in before after; do
    line=$(cd "$AB/$v" && PYTHONPATH="$AB/$v" timeout 600 "$PYTHON" "$HERE/daphne_step.py" \
      "$STREAMS" "$TOKENS" ${SSE_SHARE:-} 2>/dev/null | grep '^{')
    echo "$v $line"
  done
done
