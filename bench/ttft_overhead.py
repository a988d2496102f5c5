"""Time to first token: through the service (POST, then the first delta over SSE) against
the provider alone (the fake OpenAI-compatible server, called with the official SDK).

    TEST_TIER=distributed .venv/bin/python -m bench.ttft_overhead [--runs 20]

Starts the fake provider and the service's processes as the tests do (tests.harness), on the
tier named by TEST_TIER (embedded: one Daphne with its in-process worker and SQLite;
distributed: Daphne + run_huey, MySQL + Redis). Each run is cancelled once its first token has
arrived, so runs do not overlap; one warm-up run of each kind is not counted.
"""

from __future__ import annotations

import argparse
import math
import time

import httpx
import openai

from tests.harness import FakeLLM, Service, parse_sse
from tests.tier_env import TIER

# 500 tokens at 200 tokens/s: a 2.5 s answer, the pace of a fast hosted model; no extra wait
# before the first token, so that what is measured is the service's own overhead.
DIRECTIVE = "[fake tokens=500 rate=200 ttft=0]"


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile: a value that was measured, never an interpolation."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def through_service(client: httpx.Client, run: int) -> tuple[float, float]:
    """Seconds from sending the POST to its reply, and to receiving the first text over SSE."""
    started = time.perf_counter()
    response = client.post("/api/v1/generations", json={"prompt": f"bench {run} {DIRECTIVE}"})
    response.raise_for_status()
    created = time.perf_counter() - started
    generation_id = response.json()["id"]
    first: float | None = None
    with client.stream("GET", f"/api/v1/generations/{generation_id}/events") as events:
        for frame in parse_sse(events.iter_lines()):
            data = frame.get("data")
            if data is None:
                continue
            # A subscriber that arrives after the first delta gets it in the snapshot.
            if data["type"] == "delta" or (data["type"] == "snapshot" and data["text"]):
                first = time.perf_counter() - started
                break
            if data["type"] == "done":
                break
    client.post(f"/api/v1/generations/{generation_id}/cancel").raise_for_status()
    if first is None:
        raise RuntimeError(f"generation {generation_id} ended with no text")
    return created, first


def direct(provider: openai.OpenAI, run: int) -> float:
    """Seconds from sending the request to receiving the first text, straight from the fake."""
    started = time.perf_counter()
    stream = provider.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": f"direct {run} {DIRECTIVE}"}],
        max_tokens=1024,
        stream=True,
    )
    try:
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                return time.perf_counter() - started
    finally:
        stream.close()
    raise RuntimeError("the provider sent no text")


def report(name: str, values: list[float]) -> tuple[float, float]:
    p50, p95 = percentile(values, 50), percentile(values, 95)
    print(f"{name:<32} p50 {p50 * 1000:7.1f} ms   p95 {p95 * 1000:7.1f} ms")
    return p50, p95


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    fake = FakeLLM()
    service = Service(fake)
    try:
        service.start()
        provider = openai.OpenAI(base_url=fake.url + "/v1", api_key="bench", max_retries=0)
        post_s: list[float] = []
        service_s: list[float] = []
        direct_s: list[float] = []
        with service.client("bench") as client:
            through_service(client, -1)
            direct(provider, -1)
            # Interleaved, so that a slow moment of the machine weighs on both alike.
            for run in range(args.runs):
                created, first = through_service(client, run)
                post_s.append(created)
                service_s.append(first)
                direct_s.append(direct(provider, run))
        provider.close()
        print(f"tier {TIER}, {args.runs} runs, {DIRECTIVE}")
        service_p50, service_p95 = report("(a) POST -> first delta (SSE)", service_s)
        report("    of which POST -> 202", post_s)
        direct_p50, direct_p95 = report("(b) provider alone (SDK)", direct_s)
        print(
            f"{'overhead (a) - (b)':<32} p50 {(service_p50 - direct_p50) * 1000:7.1f} ms"
            f"   p95 {(service_p95 - direct_p95) * 1000:7.1f} ms"
        )
    finally:
        service.stop()
        fake.stop()


if __name__ == "__main__":
    main()
