"""A Daphne process's CPU per client action, one action at a time (no concurrency), each
repeated N times after 10 unmeasured: what a stream's start and end cost it, piece by piece.

    PYTHONPATH=. .venv/bin/python \
        bench/results/experiments/ws_setup_2026-12-06/daphne_actions.py [N]

One Daphne and one run_huey on MySQL + Redis (tests.harness.Service), from the root of a
checkout. The fake provider streams one token per generation.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

os.environ.setdefault("TEST_TIER", "distributed")

import httpx
import websockets

from bench import procstat
from bench.profile_worker import SERVICE_ENV
from tests.harness import Service, make_token

PROMPT = "x [fake tokens=1]"


async def ws_session(url: str, token: str, generate: bool) -> str:
    """Connect, `auth`, optionally `generate` and read until `done`; close."""
    async with websockets.connect(url) as ws:
        await ws.send(json.dumps({"type": "auth", "token": token}))
        json.loads(await ws.recv())
        if not generate:
            return ""
        await ws.send(json.dumps({"type": "generate", "prompt": PROMPT}))
        while True:
            message = json.loads(await ws.recv())
            if message.get("type") == "done":
                return str(message["id"])


async def measure_all(service: Service, runs: int) -> dict[str, float]:
    web = service.webs[0]
    assert web is not None
    base = f"http://127.0.0.1:{service.ports[0]}"
    ws_url = f"ws://127.0.0.1:{service.ports[0]}/ws/v1"
    token = make_token("actions-user")
    auth = {"Authorization": f"Bearer {token}"}
    results: dict[str, float] = {}
    async with httpx.AsyncClient(timeout=30) as http:
        generation_id = await ws_session(ws_url, token, True)

        async def measure(name: str, action: Callable[[], Awaitable[Any]]) -> None:
            for _ in range(10):
                await action()
            before = procstat.cpu_s(web.pid)
            for _ in range(runs):
                await action()
            results[name] = round((procstat.cpu_s(web.pid) - before) * 1000 / runs, 3)
            print(f"{name}: {results[name]} CPU-ms", flush=True)

        async def get_new_connection() -> None:
            async with httpx.AsyncClient(timeout=30) as fresh:
                await fresh.get(f"{base}/api/v1/generations/{generation_id}", headers=auth)

        async def sse() -> None:
            reply = await http.post(
                f"{base}/api/v1/generations", headers=auth, json={"prompt": PROMPT}
            )
            url = f"{base}/api/v1/generations/{reply.json()['id']}/events"
            async with http.stream("GET", url, headers=auth) as response:
                async for line in response.aiter_lines():
                    if line.startswith("event: done"):
                        break

        await measure("GET /healthz", lambda: http.get(f"{base}/healthz"))
        await measure(
            "GET a generation",
            lambda: http.get(f"{base}/api/v1/generations/{generation_id}", headers=auth),
        )
        await measure("GET a generation (new connection)", get_new_connection)
        await measure(
            "POST a generation",
            lambda: http.post(f"{base}/api/v1/generations", headers=auth, json={"prompt": PROMPT}),
        )
        await measure("WebSocket connect, auth, close", lambda: ws_session(ws_url, token, False))
        await measure(
            "WebSocket connect, auth, generate (1 token) until done, close",
            lambda: ws_session(ws_url, token, True),
        )
        await measure("SSE: POST, then events (1 token) until done", sse)
    return results


def main() -> None:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    with Service(webs=1, workers=1, tier="distributed", env=SERVICE_ENV) as service:
        time.sleep(2)
        asyncio.run(measure_all(service, runs))


if __name__ == "__main__":
    main()
