"""What the latency benchmarks (ttft_overhead, resume, idle_connections) share: percentiles,
the machine's load, and writing a result as `<name>.md` (a report section) and `<name>.json`."""

from __future__ import annotations

import json
import math
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile: a value that was measured, never an interpolation."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def ms(seconds: float) -> float:
    return round(seconds * 1000, 2)


def summary_ms(values_s: list[float]) -> dict[str, float]:
    """p50 / p95 / max of seconds, in milliseconds, with the count."""
    return {
        "n": len(values_s),
        "p50_ms": ms(percentile(values_s, 50)),
        "p95_ms": ms(percentile(values_s, 95)),
        "max_ms": ms(max(values_s)) if values_s else math.nan,
    }


def machine() -> dict[str, Any]:
    load1, load5, load15 = os.getloadavg()
    return {
        "cpus": os.cpu_count(),
        "load_average": [round(load1, 2), round(load5, 2), round(load15, 2)],
        "python": platform.python_version(),
        "platform": platform.platform(),
        "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def command(module: str, argv: list[str] | None = None) -> str:
    args = sys.argv[1:] if argv is None else argv
    return " ".join([".venv/bin/python", "-m", module, *args]).strip()


def write_result(
    results_dir: Path, name: str, markdown: str, data: dict[str, Any]
) -> tuple[Path, Path]:
    results_dir.mkdir(parents=True, exist_ok=True)
    md_path = results_dir / f"{name}.md"
    json_path = results_dir / f"{name}.json"
    md_path.write_text(markdown.rstrip() + "\n")
    json_path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
    return md_path, json_path


def table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def load_line(info: dict[str, Any]) -> str:
    load = info["load_average"]
    return (
        f"Machine: {info['cpus']} CPUs, load average {load[0]} / {load[1]} / {load[2]} "
        f"(1/5/15 min) at {info['at']}; Python {info['python']}."
    )
