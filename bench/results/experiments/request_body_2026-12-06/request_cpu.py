"""CPU of one provider request, whole: OpenAIProvider.astream of a 5-token answer from the
fake provider (its own process), sequential, with no history and with 20 earlier messages.

    .venv/bin/python bench/results/experiments/request_body_2026-12-06/request_cpu.py

Run from the root of the checkout to measure; prints CPU and wall ms per request.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time

sys.path.insert(0, os.getcwd())
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")

import django

django.setup()

from django.conf import settings  # noqa: E402

from jobs.providers.base import ProviderRequest  # noqa: E402
from tests.harness import FakeLLM  # noqa: E402

REQUESTS = 200


def request(earlier: int) -> ProviderRequest:
    history = tuple(
        ("user" if index % 2 == 0 else "assistant", "some earlier text " * 10)
        for index in range(earlier)
    )
    return ProviderRequest(
        model="gpt-4o-mini",
        prompt="hi [fake tokens=5 rate=10000 ttft=0]",
        system="Be brief.",
        max_tokens=256,
        temperature=None,
        history=history,
    )


async def measure(provider: object) -> None:
    for earlier in (0, 20):
        each = request(earlier)
        for _ in range(20):
            async for _chunk in provider.astream(each):  # type: ignore[attr-defined]
                pass
        cpu, wall = time.process_time(), time.perf_counter()
        for _ in range(REQUESTS):
            async for _chunk in provider.astream(each):  # type: ignore[attr-defined]
                pass
        print(
            f"history {earlier}: CPU ms/request "
            f"{(time.process_time() - cpu) * 1000 / REQUESTS:.3f}, wall "
            f"{(time.perf_counter() - wall) * 1000 / REQUESTS:.3f}"
        )
    for client in provider._async_clients.values():  # type: ignore[attr-defined]
        await client.close()


def main() -> None:
    fake = FakeLLM()
    try:
        settings.OPENAI_BASE_URL = fake.url + "/v1"
        time.sleep(1.5)
        from jobs.providers.openai_compatible import OpenAIProvider

        asyncio.run(measure(OpenAIProvider()))
    finally:
        fake.stop()


if __name__ == "__main__":
    main()
