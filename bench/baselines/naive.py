"""The naive baseline: the seed's design, as small as it gets.

    python -m bench.baselines.naive web --port P --redis URL --database NAME
    python -m bench.baselines.naive worker --redis URL --database NAME --provider URL
        [--write-per-token]

The worker streams from the provider (the same fake, through the same SDK) and PUBLISHes
every token to the generation's Redis channel; the output is written to the row once, at the
end (or, with ``--write-per-token``, one UPDATE per token: the design whose row count the
service is compared with). The web process answers a subscriber by reading the row, then
SUBSCRIBing: there is no log to resume from, so whatever is published while a client is away,
or between its row read and its subscribe, never reaches it.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import secrets
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import MySQLdb
import openai
import redis.asyncio as aioredis

from bench.baselines.tinyhttp import Request, reply_json, run_jobs, serve, sse_frame, start_sse
from bench.procstat import mysql

JOBS = "bench:naive:jobs"
SCHEMA = (
    "CREATE TABLE IF NOT EXISTS {database}.generation (id VARCHAR(40) PRIMARY KEY, "
    "status VARCHAR(16) NOT NULL, output LONGTEXT NOT NULL) CHARACTER SET utf8mb4"
)


class Database:
    """MySQLdb is blocking: queries run on a thread pool, one connection per thread."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._local = threading.local()
        self._pool = ThreadPoolExecutor(32)

    def _run(self, sql: str, args: tuple[Any, ...]) -> Any:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = MySQLdb.connect(
                host="127.0.0.1", user="root", passwd="", db=self.name, charset="utf8mb4"
            )
            conn.autocommit(True)
            self._local.conn = conn
        cursor = conn.cursor()
        cursor.execute(sql, args)
        return cursor.fetchone()

    async def run(self, sql: str, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._pool, self._run, sql, args)


def channel(generation_id: str) -> str:
    return f"bench:naive:{generation_id}"


def web(port: int, redis_url: str, database: str) -> None:
    db = Database(database)
    client = aioredis.Redis.from_url(redis_url, max_connections=4000)

    async def handle(request: Request, writer: asyncio.StreamWriter) -> None:
        parts = request.path.strip("/").split("/")  # api v1 generations [id [events]]
        if request.method == "POST" and len(parts) == 3:
            generation_id = "gen_" + secrets.token_urlsafe(12)
            await db.run("INSERT INTO generation VALUES (%s, 'queued', '')", generation_id)
            job = {"id": generation_id, "prompt": request.json()["prompt"]}
            await client.rpush(JOBS, json.dumps(job))
            await reply_json(writer, 202, {"id": generation_id})
        elif request.method == "GET" and len(parts) == 4:
            row = await db.run("SELECT status, output FROM generation WHERE id = %s", parts[3])
            await reply_json(writer, 200, {"id": parts[3], "status": row[0], "output": row[1]})
        elif request.method == "GET" and len(parts) == 5:
            generation_id = parts[3]
            row = await db.run("SELECT status, output FROM generation WHERE id = %s", generation_id)
            start_sse(writer)
            if row[0] == "done":
                snapshot = {"type": "snapshot", "id": generation_id, "seq": 0, "text": row[1]}
                writer.write(sse_frame(0, "snapshot", json.dumps(snapshot)))
                done = {"type": "done", "id": generation_id, "seq": 0, "status": "completed"}
                writer.write(sse_frame(0, "done", json.dumps(done)))
                await writer.drain()
                return
            # The seed's gap: anything published from the row read until here is gone.
            pubsub = client.pubsub()
            await pubsub.subscribe(channel(generation_id))
            try:
                async for message in pubsub.listen():
                    if message["type"] != "message":
                        continue
                    event = json.loads(message["data"])
                    writer.write(sse_frame(event["seq"], event["type"], message["data"].decode()))
                    await writer.drain()
                    if event["type"] == "done":
                        return
            finally:
                await pubsub.aclose()
        else:
            await reply_json(writer, 404, {"error": "not found"})

    asyncio.run(serve("127.0.0.1", port, handle))


async def generate(
    client: aioredis.Redis,
    job: dict[str, str],
    *,
    provider: openai.AsyncOpenAI,
    db: Database,
    write_per_token: bool,
) -> None:
    generation_id = job["id"]
    output = ""
    seq = 0
    stream = await provider.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": job["prompt"]}],
        max_tokens=100_000,
        stream=True,
    )
    async for chunk in stream:
        if not chunk.choices or not chunk.choices[0].delta.content:
            continue
        text = chunk.choices[0].delta.content
        seq += 1
        output += text
        event = {"type": "delta", "id": generation_id, "seq": seq, "text": text}
        await client.publish(channel(generation_id), json.dumps(event, ensure_ascii=False))
        if write_per_token:
            await db.run(
                "UPDATE generation SET output = CONCAT(output, %s) WHERE id = %s",
                text,
                generation_id,
            )
    if write_per_token:
        await db.run("UPDATE generation SET status = 'done' WHERE id = %s", generation_id)
    else:
        await db.run(
            "UPDATE generation SET status = 'done', output = %s WHERE id = %s",
            output,
            generation_id,
        )
    done = {"type": "done", "id": generation_id, "seq": seq + 1, "status": "completed"}
    await client.publish(channel(generation_id), json.dumps(done))


def worker(redis_url: str, database: str, provider_url: str, write_per_token: bool) -> None:
    provider = openai.AsyncOpenAI(base_url=provider_url, api_key="bench", max_retries=0)
    job = functools.partial(
        generate, provider=provider, db=Database(database), write_per_token=write_per_token
    )
    run_jobs(redis_url, JOBS, job)


def create_schema(database: str) -> None:
    mysql(f"CREATE DATABASE IF NOT EXISTS {database} CHARACTER SET utf8mb4")
    mysql(SCHEMA.format(database=database))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("role", choices=["web", "worker"])
    parser.add_argument("--port", type=int, default=8960)
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--database", required=True)
    parser.add_argument("--provider", default="http://127.0.0.1:8901/v1")
    parser.add_argument("--write-per-token", action="store_true")
    args = parser.parse_args()
    if args.role == "web":
        web(args.port, args.redis, args.database)
    else:
        worker(args.redis, args.database, args.provider, args.write_per_token)


if __name__ == "__main__":
    main()
