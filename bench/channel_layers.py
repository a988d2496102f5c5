"""Channel layer delivery: core RedisChannelLayer vs RedisPubSubChannelLayer.

    .venv/bin/python -m bench.channel_layers [--groups 100] [--messages 200] [--redis URL]

A receiver process holds one channel per group (as one Daphne process with 100 subscribers
does); a publisher process sends `messages` to each group as fast as it can, interleaved
(as workers do). Reports delivered messages per second, lost messages and the latency from
send to receipt (p50/p99), for each layer, plus a paced run (50 msg/s per group) that is the
service's normal regime.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import time
from typing import Any


def make_layer(kind: str, redis_url: str) -> Any:
    from channels_redis.core import RedisChannelLayer
    from channels_redis.pubsub import RedisPubSubChannelLayer

    if kind == "core":
        return RedisChannelLayer(hosts=[redis_url], capacity=100)
    return RedisPubSubChannelLayer(hosts=[redis_url])


def receiver(
    kind: str, redis_url: str, groups: int, messages: int, ready: Any, result: Any
) -> None:
    async def run() -> None:
        layer = make_layer(kind, redis_url)
        channels = []
        for index in range(groups):
            channel = await layer.new_channel()
            await layer.group_add(f"bench.{index}", channel)
            channels.append(channel)
        latencies: list[float] = []
        counts = [0] * groups
        first = last = 0.0
        ready.set()

        async def drain(index: int, channel: str) -> None:
            nonlocal first, last
            while counts[index] < messages:
                message = await layer.receive(channel)
                now = time.time()
                first = first or now
                last = now
                latencies.append(now - message["t"])
                counts[index] += 1

        tasks = [asyncio.create_task(drain(i, c)) for i, c in enumerate(channels)]
        _done, pending = await asyncio.wait(tasks, timeout=60 + messages / 10)
        for task in pending:
            task.cancel()
        latencies.sort()
        received = sum(counts)
        result.put(
            {
                "received": received,
                "seconds": (last - first) if received else 0.0,
                "p50_ms": 1000 * latencies[len(latencies) // 2] if latencies else None,
                "p99_ms": 1000 * latencies[int(len(latencies) * 0.99)] if latencies else None,
            }
        )

    asyncio.run(run())


def publisher(kind: str, redis_url: str, groups: int, messages: int, rate: float) -> None:
    async def run() -> None:
        layer = make_layer(kind, redis_url)
        start = time.monotonic()
        for seq in range(messages):
            if rate:
                delay = start + seq / rate - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            await asyncio.gather(
                *(
                    layer.group_send(f"bench.{g}", {"type": "x", "t": time.time(), "s": seq})
                    for g in range(groups)
                )
            )

    asyncio.run(run())


def measure(kind: str, redis_url: str, groups: int, messages: int, rate: float) -> dict[str, Any]:
    ctx = multiprocessing.get_context("spawn")
    ready, result = ctx.Event(), ctx.Queue()
    recv = ctx.Process(target=receiver, args=(kind, redis_url, groups, messages, ready, result))
    recv.start()
    ready.wait(30)
    time.sleep(0.5)
    started = time.time()
    pub = ctx.Process(target=publisher, args=(kind, redis_url, groups, messages, rate))
    pub.start()
    pub.join()
    outcome: dict[str, Any] = result.get(timeout=120 + messages)
    recv.join()
    total = groups * messages
    outcome.update(
        layer=kind,
        rate=rate or "max",
        sent=total,
        lost=total - outcome["received"],
        msgs_per_s=round(outcome["received"] / max(outcome["seconds"], 1e-9)),
        wall_s=round(time.time() - started, 2),
    )
    return outcome


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--groups", type=int, default=100)
    parser.add_argument("--messages", type=int, default=200)
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/7")
    args = parser.parse_args()
    rows = []
    for kind in ("core", "pubsub"):
        rows.append(measure(kind, args.redis, args.groups, args.messages, 0))
        rows.append(measure(kind, args.redis, args.groups, args.messages, 50))
    print(json.dumps(rows, indent=1))
    print("| layer | send rate per group | delivered msg/s | lost | p50 ms | p99 ms |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        p50 = row["p50_ms"] if row["p50_ms"] is not None else float("nan")
        p99 = row["p99_ms"] if row["p99_ms"] is not None else float("nan")
        print(
            f"| {row['layer']} | {row['rate']} | {row['msgs_per_s']} | {row['lost']} "
            f"| {p50:.1f} | {p99:.1f} |"
        )


if __name__ == "__main__":
    main()
