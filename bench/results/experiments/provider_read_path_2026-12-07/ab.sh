#!/bin/bash
# One capacity step of `ours` (bench/results/experiments/ws_setup_2026-12-06/daphne_step.py)
# in two checkouts, AB/before and AB/after, ROUNDS times, the order alternating by round
# (old first in odd rounds, new first in even ones). Prints each step's CPU by process.
#   AB=<dir holding before/ and after/> PYTHON=<venv python> ./ab.sh ROUNDS STREAMS TOKENS
ROUNDS=$1; STREAMS=$2; TOKENS=$3
STEP=$(cd "$(dirname "$0")/../ws_setup_2026-12-06" && pwd)/daphne_step.py
for r in $(seq 1 "$ROUNDS"); do
  if [ $((r % 2)) -eq 1 ]; then order="before after"; else order="after before"; fi
  for v in $order; do
    line=$(cd "$AB/$v" && PYTHONPATH="$AB/$v" timeout 600 "$PYTHON" "$STEP" "$STREAMS" "$TOKENS" \
      2>/dev/null | grep '^{')
    echo "$v $(echo "$line" | "$PYTHON" -c 'import sys, json
d = json.loads(sys.stdin.read()); c = d["cpu_s"]
print(d["streams"], "p99", d["event_p99_ms"], "tokens", d["tokens_received"], " ".join(f"{k} {v}" for k, v in c.items()), "lost", d["lost_chars"])')"
  done
done
