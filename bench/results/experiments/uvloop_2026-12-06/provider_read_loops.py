"""The provider read alone (bench.provider_read's, aiohttp, 50 streams of 750 tokens at 50
tokens/s) on asyncio's event loop and on uvloop's, alternating, four rounds each:

    .venv/bin/python bench/results/experiments/uvloop_2026-12-06/provider_read_loops.py
"""

import asyncio
import os
import sys

import django
import uvloop

sys.path.insert(0, ".")
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
django.setup()

from django.conf import settings  # noqa: E402

from bench import provider_read  # noqa: E402
from tests.harness import FakeLLM  # noqa: E402


def measure(kind: str) -> None:
    policy = uvloop.EventLoopPolicy() if kind == "uvloop" else asyncio.DefaultEventLoopPolicy()
    asyncio.set_event_loop_policy(policy)
    result = provider_read.measure("aiohttp", 50, 750, 50.0)
    print({**result, "loop": kind}, flush=True)


fake = FakeLLM()
settings.OPENAI_BASE_URL = fake.url + "/v1"
settings.OPENAI_API_KEY = "bench"
try:
    for _ in range(4):
        measure("asyncio")
        measure("uvloop")
finally:
    fake.stop()
