"""A minimal Redis-streams SSE server: the raw ceiling the service is compared with.

    python -m bench.baselines.streams_sse server --port P --redis URL
    python -m bench.baselines.streams_sse producer --redis URL

The producer XADDs one entry per token (at the pace the prompt's ``[fake ...]`` directive
asks, stamped like the fake provider's ``stamp=1``); each SSE client XREADs the generation's
stream from its position (``Last-Event-ID``), so a reconnect resumes with nothing lost. No
database, no auth, no coalescing: what Redis and one asyncio process can do.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import time

import redis.asyncio as aioredis

from bench.baselines.tinyhttp import Request, reply_json, run_jobs, serve, sse_frame, start_sse
from tests.fake_openai import Behaviour, parse_directive, stamped, token_text

JOBS = "bench:streams:jobs"
# Generations' streams outlive the run by this much, then Redis drops them.
KEEP_S = 3600


def key(generation_id: str) -> str:
    return f"bench:streams:{generation_id}"


def server(port: int, redis_url: str) -> None:
    # One connection per waiting XREAD: a blocking read holds its connection.
    client = aioredis.Redis.from_url(redis_url, max_connections=4000)

    async def handle(request: Request, writer: asyncio.StreamWriter) -> None:
        parts = request.path.strip("/").split("/")  # api v1 generations [id [events]]
        if request.method == "POST" and len(parts) == 3:
            generation_id = "gen_" + secrets.token_urlsafe(12)
            job = {"id": generation_id, "prompt": request.json()["prompt"]}
            await client.rpush(JOBS, json.dumps(job))
            await reply_json(writer, 202, {"id": generation_id})
        elif request.method == "GET" and len(parts) == 4:
            entries = await client.xrange(key(parts[3]))
            events = [json.loads(fields[b"d"]) for _id, fields in entries]
            output = "".join(e.get("text", "") for e in events if e["type"] == "delta")
            await reply_json(writer, 200, {"id": parts[3], "output": output})
        elif request.method == "GET" and len(parts) == 5:
            after = int(request.headers.get("last-event-id") or 0)
            start_sse(writer)
            position = f"0-{after}"
            while True:
                found = await client.xread({key(parts[3]): position}, count=100, block=15_000)
                for _stream, entries in found:
                    for entry_id, fields in entries:
                        position = entry_id.decode()
                        event = json.loads(fields[b"d"])
                        writer.write(sse_frame(event["seq"], event["type"], fields[b"d"].decode()))
                        if event["type"] == "done":
                            await writer.drain()
                            return
                await writer.drain()
        else:
            await reply_json(writer, 404, {"error": "not found"})

    asyncio.run(serve("127.0.0.1", port, handle))


async def produce(client: aioredis.Redis, job: dict[str, str]) -> None:
    behaviour = parse_directive(job["prompt"], Behaviour())
    stream = key(job["id"])
    await asyncio.sleep(behaviour.ttft / 1000)
    started = time.monotonic()
    for index in range(behaviour.tokens):
        delay = started + index / behaviour.rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        text = stamped(token_text(index), time.time())
        event = {"type": "delta", "id": job["id"], "seq": index + 1, "text": text}
        await client.xadd(stream, {"d": json.dumps(event, ensure_ascii=False)}, id=f"0-{index + 1}")
    done = {"type": "done", "id": job["id"], "seq": behaviour.tokens + 1, "status": "completed"}
    await client.xadd(stream, {"d": json.dumps(done)}, id=f"0-{behaviour.tokens + 1}")
    await client.expire(stream, KEEP_S)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("role", choices=["server", "producer"])
    parser.add_argument("--port", type=int, default=8950)
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    args = parser.parse_args()
    if args.role == "server":
        server(args.port, args.redis)
    else:
        run_jobs(args.redis, JOBS, produce)


if __name__ == "__main__":
    main()
