"""CPU per token of the worker's provider read alone, in this checkout: 50 streams of 300
tokens at 50 tokens/s from the fake provider (its own process), read through the project's
OpenAI provider over the SDK's aiohttp transport on uvloop, after a short warm-up read (the
SDK's import and first client are not a cost per token). Prints CPU-ms per token, then
user and system CPU-ms per token.

    PYTHONPATH=. .venv/bin/python \
        bench/results/experiments/provider_read_path_2026-12-07/read_cpu.py
"""

from __future__ import annotations

import asyncio
import os
import resource

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")

from tests.harness import FakeLLM


def main() -> None:
    fake = FakeLLM()
    os.environ["OPENAI_BASE_URL"] = fake.url + "/v1"
    os.environ["OPENAI_API_KEY"] = "not-needed"
    django.setup()
    import uvloop

    from bench.provider_read import measure

    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    try:
        measure("aiohttp", 5, 20, 50)  # warm-up
        before = resource.getrusage(resource.RUSAGE_SELF)
        row = measure("aiohttp", 50, 300, 50)
        after = resource.getrusage(resource.RUSAGE_SELF)
        tokens = row["tokens_received"]
        user = (after.ru_utime - before.ru_utime) * 1000 / tokens
        system = (after.ru_stime - before.ru_stime) * 1000 / tokens
        print(row["cpu_ms_per_token"], round(user, 4), round(system, 4), tokens)
    finally:
        fake.stop()


if __name__ == "__main__":
    main()
