#!/bin/bash
# The round-trip changes, A/B: in two checkouts (AB/before, AB/after), alternating, ROUNDS
# times, each of
#   - bench.ttft_overhead on the distributed tier (40 sequential runs, then the burst of 50);
#   - ../ws_setup_2026-12-06/post_gap.py (a create's POST by the idle gap before it);
#   - ../ws_setup_2026-12-06/daphne_actions.py 200 (Daphne's CPU per client action).
#   AB=<dir holding the two worktrees> PYTHON=<venv python> ./ab.sh ROUNDS
ROUNDS=$1
HERE=$(cd "$(dirname "$0")" && pwd)
for r in $(seq 1 "$ROUNDS"); do
  for v in before after; do
    cd "$AB/$v" || exit 1
    ttft=$(timeout 600 "$PYTHON" -m bench.ttft_overhead --runs 40 --tier distributed 2>/dev/null |
      grep -E '^\| distributed \| (40|50|of which POST)' | tr -s ' ' | tr '\n' ' ')
    echo "$v ttft: $ttft"
    echo "$v post_gap: $(TEST_TIER=distributed PYTHONPATH=. timeout 600 "$PYTHON" "$HERE/../ws_setup_2026-12-06/post_gap.py" 2>/dev/null | tail -1)"
    echo "$v daphne_actions: $(PYTHONPATH=. timeout 600 "$PYTHON" "$HERE/../ws_setup_2026-12-06/daphne_actions.py" 200 2>/dev/null | tr '\n' ' ')"
  done
done
