"""Time to first token: through the service (POST, then the first delta over SSE) against
the provider alone (the fake OpenAI-compatible server, called with the official SDK).

    .venv/bin/python -m bench.ttft_overhead [--runs 20] [--tier embedded|distributed|both]

Starts the fake provider and the service's processes as the tests do (tests.harness), on
each tier asked for (default: the one TEST_TIER names; embedded: one Daphne with its
in-process worker and SQLite; distributed: Daphne + run_huey, MySQL + Redis). Each run is
cancelled once its first token has arrived, so runs do not overlap; one warm-up run of each
kind is not counted.

The fake stamps every token with the wall-clock time it sent it (``stamp=1``), so the
service's time splits into: POST -> 202; POST -> the provider sends the first token (the
queue hop, the worker's claim and the provider request); and that send -> the SSE client
receives it (the worker's read, coalescing, publish and the live delivery).
"""

from __future__ import annotations

import gc
import pathlib
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import openai

from bench.latency_report import (
    command,
    ms,
    parser,
    percentile,
    section,
    summary_ms,
    table,
    tiers_for,
    write_tiers,
)
from tests.fake_openai import STAMP
from tests.harness import Service, parse_sse
from tests.tier_env import TIER

NAME = "ttft_overhead"
# 500 tokens at 200 tokens/s: a 2.5 s answer, the pace of a fast hosted model; no extra wait
# before the first token, so that what is measured is the service's own overhead.
DIRECTIVE = "[fake tokens=500 rate=200 ttft=0 stamp=1]"
# The burst's generations are the load the hot-path issue describes: 300 tokens at 50
# tokens/s each, so that 50 of them offer 2,500 tokens/s (at 200 tokens/s they offered
# 10,000, twice what the capacity benchmark's 100-stream step does, and measured that load).
BURST_DIRECTIVE = "[fake tokens=300 rate=50 ttft=0 stamp=1]"
# The hot-path issue's target for the overhead over calling the provider directly.
TARGET_P50_MS = 10.0
# Under load: this many users each creating a generation within one second, TTFT p50 (POST
# sent -> first text received) at most TARGET_BURST_P50_MS.
BURST_USERS = 50
BURST_SPREAD_S = 1.0
TARGET_BURST_P50_MS = 50.0
QUICK_RUNS = 3
NOTE = (
    "What the spans hold. POST -> 202: the Django request (JWT, the user's row), the create "
    "transaction (the user's row lock, the limits, the insert) and the enqueue. 202 -> the "
    "provider's first token: the queue hop, the worker's claim (its own database connection, "
    "the row updates, the quota reservation under the user's row lock, the log fence in "
    "Redis) and the provider request. Provider send -> SSE receipt: the worker's read, the "
    "log append and the live delivery. Removed in this round: the embedded queue's polling "
    "(Huey's consumer slept up to 10 s between looks at a SQLite queue; an enqueue now wakes "
    "a waiting worker) and its fsync per enqueue and dequeue; the channel layer receiver's "
    "100 ms naps in a Daphne process with no subscriber left (the first live delta of the "
    "next stream waited for one). Then the claim became one UPDATE under the user's lock "
    "(7 statements where it was 9). Measured and not kept: database connections kept per "
    "thread (CONN_MAX_AGE, docs/scaling.md). Then (core.mysql) a transaction became START "
    "TRANSACTION and COMMIT without the SET autocommit pair, a kept connection's health check its "
    "request's first read, and the user's row lock one statement with the usage read: a "
    "create is 7 statements and 2 Redis commands where it was 10 and 2, a claim 5 statements "
    "and the log fence where it was 7, the fence and Huey's revocation read. What is left is "
    "Django's own work per request and the hops between processes; every span here is "
    "CPU-bound on 2 cores."
)


def through_service(client: httpx.Client, run: int, directive: str = DIRECTIVE) -> dict[str, float]:
    """Seconds from sending the POST to its reply, to the provider sending the first token,
    and to receiving the first text over SSE."""
    started_wall = time.time()
    started = time.perf_counter()
    response = client.post("/api/v1/generations", json={"prompt": f"bench {run} {directive}"})
    response.raise_for_status()
    created = time.perf_counter() - started
    generation_id = response.json()["id"]
    first: float | None = None
    sent_wall: float | None = None
    with client.stream("GET", f"/api/v1/generations/{generation_id}/events") as events:
        for frame in parse_sse(events.iter_lines()):
            data = frame.get("data")
            if data is None:
                continue
            # A subscriber that arrives after the first delta gets it in the snapshot.
            if data["type"] == "delta" or (data["type"] == "snapshot" and data["text"]):
                first = time.perf_counter() - started
                stamp = STAMP.search(data["text"])
                sent_wall = float(stamp.group(1)) if stamp else None
                break
            if data["type"] == "done":
                break
    client.post(f"/api/v1/generations/{generation_id}/cancel").raise_for_status()
    if first is None or sent_wall is None:
        raise RuntimeError(f"generation {generation_id} ended with no stamped text")
    provider_sent = sent_wall - started_wall
    return {
        "post": created,
        "first": first,
        "provider_sent": provider_sent,
        "delivery": first - provider_sent,
    }


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


def burst(service: Service, users: int) -> list[dict[str, float]]:
    """`users` users, one generation each, their POSTs spread evenly over BURST_SPREAD_S:
    each one's spans (`through_service`)."""
    clients = [service.client(f"burst{index}") for index in range(users)]
    start_at = time.perf_counter() + 0.5

    def one(index: int) -> dict[str, float]:
        time.sleep(max(0.0, start_at + BURST_SPREAD_S * index / users - time.perf_counter()))
        return through_service(clients[index], 1000 + index, BURST_DIRECTIVE)

    try:
        with ThreadPoolExecutor(max_workers=users) as pool:
            return list(pool.map(one, range(users)))
    finally:
        for client in clients:
            client.close()


def measure(tier: str, runs: int, burst_users: int = BURST_USERS) -> dict[str, Any]:
    with Service(tier=tier) as service:
        # This process is the clients: what it has loaded so far (the SDK, Django, the
        # harness) stays out of its garbage collector's full collections, which otherwise
        # paused every client thread at once, a burst's 50 included (docs/scaling.md, "The
        # benchmarks' own processes").
        gc.collect()
        gc.freeze()
        provider = openai.OpenAI(base_url=service.fake.url + "/v1", api_key="bench", max_retries=0)
        series: dict[str, list[float]] = {
            key: [] for key in ("post", "first", "provider_sent", "delivery", "direct")
        }
        with service.client("bench") as client:
            through_service(client, -1)
            direct(provider, -1)
            # Interleaved, so that a slow moment of the machine weighs on both alike.
            for run in range(runs):
                for key, value in through_service(client, run).items():
                    series[key].append(value)
                series["direct"].append(direct(provider, run))
        provider.close()
        burst_spans = burst(service, burst_users)
    result: dict[str, Any] = {key: summary_ms(values) for key, values in series.items()}
    result["overhead"] = {
        f"p{q}_ms": ms(percentile(series["first"], q) - percentile(series["direct"], q))
        for q in (50, 95)
    }
    result["burst"] = {
        "users": burst_users,
        **summary_ms([spans["first"] for spans in burst_spans]),
        "spans": {
            key: summary_ms([spans[key] for spans in burst_spans])
            for key in ("post", "provider_sent", "delivery")
        },
    }
    return {**result, "tier": tier, "runs": runs}


ROWS = [
    ("first", "(a) POST -> first text over SSE"),
    ("post", "    of which POST -> 202"),
    ("provider_sent", "    POST -> provider sends token 1"),
    ("delivery", "    provider send -> SSE receipt"),
    ("direct", "(b) provider alone (SDK)"),
]


def markdown(results: list[dict[str, Any]], info: dict[str, Any], cmd: str) -> str:
    rows: list[list[Any]] = []
    for result in results:
        overhead = result["overhead"]
        met = "met" if overhead["p50_ms"] < TARGET_P50_MS else "NOT met"
        rows.append(
            [
                result["tier"],
                result["runs"],
                result["first"]["p50_ms"],
                result["direct"]["p50_ms"],
                f"**{overhead['p50_ms']}**",
                overhead["p95_ms"],
                f"< {TARGET_P50_MS:g} ({met})",
            ]
        )
    bursts: list[list[Any]] = []
    for result in results:
        row = result["burst"]
        met = "met" if row["p50_ms"] <= TARGET_BURST_P50_MS else "NOT met"
        bursts.append(
            [
                result["tier"],
                row["users"],
                f"**{row['p50_ms']}**",
                row["p95_ms"],
                *(row["spans"][key]["p50_ms"] for key in ("post", "provider_sent", "delivery")),
                f"<= {TARGET_BURST_P50_MS:g} ({met})",
            ]
        )
    breakdown = [
        [result["tier"], label.strip(), result[key]["p50_ms"], result[key]["p95_ms"]]
        for result in results
        for key, label in ROWS
    ]
    return section(
        "Time to first token overhead",
        cmd,
        info,
        f"Prompt directive `{DIRECTIVE}`: the fake streams at once; each run is one "
        "generation created by `POST /api/v1/generations` and read over SSE, against "
        "the same request sent to the fake with the OpenAI SDK, interleaved.",
        table(
            [
                "tier",
                "runs",
                "service p50 (ms)",
                "provider alone p50 (ms)",
                "overhead p50 (ms)",
                "overhead p95 (ms)",
                "target p50 (ms)",
            ],
            rows,
        ),
        f"Under load: {BURST_USERS} users (quick run: fewer) each create one generation, "
        f"their POSTs spread evenly over {BURST_SPREAD_S:g} s, and read it over SSE "
        f"(directive `{BURST_DIRECTIVE}`); time from each POST to its first text, and "
        "its spans:",
        table(
            [
                "tier",
                "users",
                "p50 (ms)",
                "p95 (ms)",
                "POST -> 202 p50",
                "POST -> provider sends p50",
                "provider send -> receipt p50",
                "target p50 (ms)",
            ],
            bursts,
        ),
        "Where the time goes (the fake stamps each token with its send time):",
        table(["tier", "span", "p50 (ms)", "p95 (ms)"], breakdown),
        NOTE,
    )


def write(results_dir: pathlib.Path | None, results: list[dict[str, Any]], cmd: str) -> str:
    return write_tiers(
        results_dir,
        NAME,
        markdown,
        results,
        cmd,
        target_p50_ms=TARGET_P50_MS,
        target_burst_p50_ms=TARGET_BURST_P50_MS,
    )


def run(results_dir: pathlib.Path, quick: bool) -> None:
    """Both tiers; `quick`: a few runs on the TEST_TIER one only, to see that it works."""
    runs = QUICK_RUNS if quick else 20
    tier = TIER if quick else "both"
    results = [
        measure(name, runs, burst_users=5 if quick else BURST_USERS) for name in tiers_for(tier)
    ]
    write(results_dir, results, command(f"bench.{NAME}", ["--tier", tier, "--runs", str(runs)]))


def main() -> None:
    args_parser = parser(__doc__, "also write ttft_overhead.md/.json here")
    args_parser.add_argument("--runs", type=int, default=20)
    args = args_parser.parse_args()
    results = [measure(tier, args.runs) for tier in tiers_for(args.tier)]
    print(write(args.results, results, command(f"bench.{NAME}")))


if __name__ == "__main__":
    main()
