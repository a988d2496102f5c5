"""The worker's provider read alone: CPU per token of reading chat completion streams through
the project's OpenAI provider (jobs.providers.openai_compatible), with each HTTP transport
the official SDK can use.

    .venv/bin/python -m bench.provider_read [--streams 50] [--tokens 750] [--rate 50]
        [--rounds 3] [--results bench/results]

The fake OpenAI-compatible server (tests.fake_openai, its own process) streams `--streams`
answers at once, `--rate` tokens/s each, one network write per token as hosted providers do.
This process reads them all on one event loop, as a worker's engine does, and counts its own
CPU time (user + system) per token. Rounds alternate the transports so that a change in
the machine's load falls on both alike. Nothing but the read is measured: no Redis, no
database, no publishing.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import pathlib
import statistics
import sys
import time
from typing import Any

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")

from bench.latency_report import command, machine, section, table, write_result
from tests.harness import FakeLLM

NAME = "provider_read"
TRANSPORTS = ("httpx", "aiohttp")


async def _read_all(streams: int, tokens: int, rate: float) -> int:
    from jobs.providers.base import ProviderRequest
    from jobs.providers.openai_compatible import OpenAIProvider

    provider = OpenAIProvider()
    request = ProviderRequest(
        model="gpt-4o-mini",
        prompt=f"bench [fake tokens={tokens} rate={rate} ttft=0]",
        system=None,
        max_tokens=tokens + 10,
        temperature=None,
    )

    async def one() -> int:
        count = 0
        async for chunk in provider.astream(request):
            count += 1 if chunk.text else 0
        return count

    try:
        return sum(await asyncio.gather(*(one() for _ in range(streams))))
    finally:
        for client in list(provider._async_clients.values()):
            await client.close()


def measure(transport: str, streams: int, tokens: int, rate: float) -> dict[str, Any]:
    from django.conf import settings

    settings.OPENAI_HTTP_TRANSPORT = transport
    started_cpu, started = time.process_time(), time.monotonic()
    received = asyncio.run(_read_all(streams, tokens, rate))
    cpu_s, wall_s = time.process_time() - started_cpu, time.monotonic() - started
    return {
        "transport": transport,
        "streams": streams,
        "tokens_received": received,
        "cpu_s": round(cpu_s, 3),
        "wall_s": round(wall_s, 2),
        "cpu_ms_per_token": round(cpu_s * 1000 / max(1, received), 4),
    }


def markdown(rounds: list[dict[str, Any]], info: dict[str, Any], cmd: str) -> str:
    rows = []
    for transport in TRANSPORTS:
        mine = [r["cpu_ms_per_token"] for r in rounds if r["transport"] == transport]
        median = round(statistics.median(mine), 4)
        rows.append([transport, len(mine), median, min(mine), max(mine)])
    return section(
        "Provider read: CPU per token by HTTP transport",
        cmd,
        info,
        table(["transport", "rounds", "CPU ms/token (median)", "min", "max"], rows),
    )


def run(results_dir: pathlib.Path, quick: bool) -> None:
    """`python -m bench`: the defaults (a smoke run with --quick)."""
    small = {"streams": 5, "tokens": 50, "rate": 500.0, "rounds": 1} if quick else {}
    main([*(f"--{k}={v}" for k, v in small.items()), f"--results={results_dir}"])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, default=50)
    parser.add_argument("--tokens", type=int, default=750)
    parser.add_argument("--rate", type=float, default=50.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--results", type=pathlib.Path, default=pathlib.Path("bench/results"))
    args = parser.parse_args(argv)
    django.setup()
    from django.conf import settings

    fake = FakeLLM()
    settings.OPENAI_BASE_URL = fake.url + "/v1"
    settings.OPENAI_API_KEY = "bench"
    try:
        for transport in TRANSPORTS:  # warm-up, not counted: imports, first connections
            measure(transport, 5, 20, 1000.0)
        results = [
            measure(transport, args.streams, args.tokens, args.rate)
            for _ in range(args.rounds)
            for transport in TRANSPORTS
        ]
    finally:
        fake.stop()
    for result in results:
        print(result, flush=True)
    info = machine()
    cmd = command("bench.provider_read", argv if argv is not None else sys.argv[1:])
    data = {"rounds": results, "machine": info}
    print(write_result(args.results, NAME, markdown(results, info, cmd), data))


if __name__ == "__main__":
    main()
