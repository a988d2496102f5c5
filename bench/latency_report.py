"""What the latency benchmarks (ttft_overhead, resume, idle_connections) share: percentiles,
the machine's load, and writing a result as `<name>.md` (a report section) and `<name>.json`."""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.tier_env import TIER


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


def write_result(results_dir: Path | None, name: str, markdown: str, data: dict[str, Any]) -> str:
    """Writes `<name>.md` and `<name>.json` into `results_dir` when there is one; returns the
    Markdown, for a standalone run to print."""
    markdown = markdown.rstrip() + "\n"
    if results_dir is not None:
        results_dir.mkdir(parents=True, exist_ok=True)
        (results_dir / f"{name}.md").write_text(markdown)
        json_text = json.dumps(data, indent=2, ensure_ascii=False)
        (results_dir / f"{name}.json").write_text(json_text + "\n")
    return markdown


def write_tiers(
    results_dir: Path | None,
    name: str,
    markdown: Callable[[list[dict[str, Any]], dict[str, Any], str], str],
    results: list[dict[str, Any]],
    cmd: str,
    **targets: Any,
) -> str:
    """A result per tier: `<name>.md` from `markdown` and the JSON of the targets and tiers."""
    info = machine()
    data = {**targets, "machine": info, "tiers": results}
    return write_result(results_dir, name, markdown(results, info, cmd), data)


def tiers_for(choice: str) -> list[str]:
    return ["embedded", "distributed"] if choice == "both" else [choice]


def parser(doc: str | None, results_help: str) -> argparse.ArgumentParser:
    """The options every latency benchmark takes; the caller adds its own."""
    parser = argparse.ArgumentParser(description=(doc or "").split("\n\n")[0])
    parser.add_argument("--tier", choices=["embedded", "distributed", "both"], default=TIER)
    parser.add_argument("--results", type=Path, help=results_help)
    return parser


def table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def section(title: str, cmd: str, info: dict[str, Any], *parts: str) -> str:
    """A report section: its title, the command that reproduces it, `parts`, and the machine
    it ran on."""
    load = info["load_average"]
    machine_line = (
        f"Machine: {info['cpus']} CPUs, load average {load[0]} / {load[1]} / {load[2]} "
        f"(1/5/15 min) at {info['at']}; Python {info['python']}."
    )
    return "\n\n".join([f"## {title}", f"`{cmd}`", *parts, machine_line])
