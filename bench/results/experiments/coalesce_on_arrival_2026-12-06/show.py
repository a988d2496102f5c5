"""Print the rows of a run3.sh output file by step and variant, with each process's CPU per
token.

    python show.py three_way_grid.jsonl
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(path: Path) -> None:
    rows = []
    for line in path.read_text().splitlines():
        variant, data = line.split(" ", 1)
        rows.append((variant, json.loads(data)))
    for variant, r in sorted(rows, key=lambda row: (row[1]["streams"], row[0])):
        kilotokens = r["tokens_received"] / 1000
        per_token = "  ".join(
            f"{name}={r['cpu_s'][name] / kilotokens:.4f}" for name in ("daphne", "worker", "redis")
        )
        print(
            f"{variant:6} {r['streams']:4}  event p50/p99 {r['event_p50_ms']}/{r['event_p99_ms']}"
            f"  token p50/p99 {r['token_p50_ms']}/{r['token_p99_ms']}"
            f"  CPU-s/1k {r['cpu_s_per_1k_tokens']}  CPU-ms/token {per_token}"
            f"  events {r['events_received']}  lost/dup {r['lost_chars']}/{r['duplicated_chars']}"
            f"{'  LAGGED' if r['lagged'] else ''}"
        )


if __name__ == "__main__":
    main(Path(sys.argv[1]))
