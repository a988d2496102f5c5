"""Means by step and variant of a run3.sh output file: CPU per 1,000 tokens, each process
group's CPU-ms per token (the worker's of every step listed), the event p99s and their median.

    python summary.py ab_50_100.jsonl gate reader
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path
from typing import Any


def main(path: Path, variants: list[str]) -> None:
    rows: list[tuple[str, dict[str, Any]]] = []
    for line in path.read_text().splitlines():
        variant, data = line.split(" ", 1)
        rows.append((variant, json.loads(data)))
    for streams in sorted({row["streams"] for _, row in rows}):
        for variant in variants:
            steps = [r for v, r in rows if v == variant and r["streams"] == streams]
            if not steps:
                continue

            def per_token(group: str, steps: list[dict[str, Any]] = steps) -> list[float]:
                return [r["cpu_s"].get(group, 0) / (r["tokens_received"] / 1000) for r in steps]

            worker = per_token("worker")
            print(
                f"{streams} {variant} steps={len(steps)}"
                f" cpu/1k={statistics.mean(r['cpu_s_per_1k_tokens'] for r in steps):.3f}"
                f" worker={statistics.mean(worker):.4f} ({' '.join(f'{w:.3f}' for w in worker)})"
                f" daphne={statistics.mean(per_token('daphne')):.4f}"
                f" redis={statistics.mean(per_token('redis')):.4f}"
                f" provider={statistics.mean(per_token('provider')):.4f}"
                f" p99={[r['event_p99_ms'] for r in steps]}"
                f" median={statistics.median(r['event_p99_ms'] for r in steps):.1f}"
                f" lost/dup={sum(r['lost_chars'] for r in steps)}"
                f"/{sum(r['duplicated_chars'] for r in steps)}"
            )


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2:])
