"""Across processes on MySQL + Redis: two Daphne processes, two Huey workers, many clients
that drop and resume at random moments, alternating WebSocket and SSE and switching Daphne
process each time. Every client's fold must equal the final output, every segment gap-free.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
import redis
from websockets.asyncio.client import connect

from jobs.events import fold
from tests.fake_openai import expected_text
from tests.harness import FakeLLM, Service, make_token
from tests.tier_env import TIER
from tests.wire import decoded_event, decoded_frame

pytestmark = pytest.mark.skipif(
    TIER != "distributed", reason="several web and worker processes need the distributed tier"
)

CLIENTS = 20
TOKENS = 300


@pytest.fixture(scope="module")
def cluster(fake_llm: FakeLLM) -> Iterator[Service]:
    instance = Service(fake_llm, webs=2, workers=2).start()
    yield instance
    instance.stop()


async def ws_segment(
    url: str, token: str, generation_id: str, after: int, cut_after: int | None
) -> list[dict[str, Any]]:
    received: list[dict[str, Any]] = []
    async with connect(url) as ws:
        await ws.send(json.dumps({"type": "auth", "token": token}))
        assert decoded_frame(await ws.recv())["type"] == "auth.ok"
        await ws.send(json.dumps({"type": "subscribe", "id": generation_id, "after": after}))
        while True:
            try:
                frame = decoded_frame(await asyncio.wait_for(ws.recv(), 30))
            except TimeoutError:
                raise AssertionError(
                    f"WS {url} {generation_id} after={after} got {received}"
                ) from None
            if frame["type"] in ("subscribed",):
                continue
            assert frame["type"] in ("snapshot", "delta", "reset", "done"), frame
            received.append(frame)
            if frame["type"] == "done" or (cut_after is not None and len(received) >= cut_after):
                return received


async def sse_lines(response: httpx.Response) -> AsyncIterator[dict[str, Any]]:
    async for line in response.aiter_lines():
        if line.startswith("data: "):
            yield decoded_event(line[6:])


async def sse_segment(
    base_url: str, token: str, generation_id: str, after: int, cut_after: int | None
) -> list[dict[str, Any]]:
    received: list[dict[str, Any]] = []
    headers = {"Authorization": f"Bearer {token}", "Last-Event-ID": str(after)}
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:
        url = f"/api/v1/generations/{generation_id}/events"
        async with client.stream("GET", url, headers=headers) as response:
            if response.status_code == 204:
                return received
            assert response.status_code == 200
            async for frame in sse_lines(response):
                received.append(frame)
                if frame["type"] == "done" or (
                    cut_after is not None and len(received) >= cut_after
                ):
                    return received
    return received


def check_segment(segment: list[dict[str, Any]], after: int) -> None:
    """No gap and no duplicate: a snapshot may open the segment, then seq+1 each time."""
    position = after
    for index, message in enumerate(segment):
        if message["type"] == "snapshot":
            assert index == 0, "a snapshot only opens a segment here"
            position = message["seq"]
            continue
        assert message["seq"] == position + 1, (message, position)
        position = message["seq"]


async def one_client(
    cluster: Service, number: int, rng: random.Random
) -> tuple[str, list[dict[str, Any]]]:
    token = make_token(f"client{number}")
    async with httpx.AsyncClient(
        base_url=cluster.url(web=number % 2), headers={"Authorization": f"Bearer {token}"}
    ) as client:
        response = await client.post(
            "/api/v1/generations",
            json={"prompt": f"client {number} [fake tokens={TOKENS} rate=120]"},
        )
        assert response.status_code == 202, response.text
        generation_id = response.json()["id"]
    cuts = rng.randint(3, 6)
    received: list[dict[str, Any]] = []
    after = 0
    for segment_number in range(cuts + 1):
        await asyncio.sleep(rng.uniform(0, 0.4))
        web = (number + segment_number) % 2
        last_segment = segment_number == cuts
        cut_after = None if last_segment else rng.randint(1, 12)
        if segment_number % 2 == 0:
            ws_url = cluster.url("/ws/v1", web=web).replace("http://", "ws://")
            segment = await ws_segment(ws_url, token, generation_id, after, cut_after)
        else:
            segment = await sse_segment(
                cluster.url(web=web), token, generation_id, after, cut_after
            )
        check_segment(segment, after)
        received.extend(segment)
        if segment:
            after = segment[-1]["seq"]
        if segment and segment[-1]["type"] == "done":
            break
    if not received or received[-1]["type"] != "done":
        received.extend(
            await ws_segment(
                cluster.url("/ws/v1").replace("http://", "ws://"), token, generation_id, after, None
            )
        )
    return generation_id, received


async def test_clients_reconnecting_across_processes_and_transports_fold_to_final_output(
    cluster: Service,
) -> None:
    rng = random.Random(20261127)
    results = await asyncio.gather(*(one_client(cluster, n, rng) for n in range(CLIENTS)))
    async with httpx.AsyncClient(base_url=cluster.url(), timeout=30) as client:
        for number, (generation_id, received) in enumerate(results):
            headers = {"Authorization": f"Bearer {make_token(f'client{number}')}"}
            final = (
                await client.get(f"/api/v1/generations/{generation_id}", headers=headers)
            ).json()
            assert final["status"] == "completed"
            assert received[-1]["type"] == "done"
            assert received[-1]["seq"] == final["seq"]
            assert fold(received) == final["output"] == expected_text(TOKENS)
            delta_seqs = [m["seq"] for m in received if m["type"] != "snapshot"]
            assert len(delta_seqs) == len(set(delta_seqs)), "an event arrived twice"


async def test_hundred_idle_subscribers_outlive_socket_timeouts_and_pool_limits(
    cluster: Service,
) -> None:
    """redis-py 6+ with channels_redis 4.3: blocking reads time out after 5 s and 100
    concurrent consumers raise "Too many connections". 100 subscribers wait here > 6 s on
    a generation that has not started, then must receive all of it."""
    token = make_token("patient")
    async with httpx.AsyncClient(
        base_url=cluster.url(), headers={"Authorization": f"Bearer {token}"}
    ) as client:
        response = await client.post(
            "/api/v1/generations", json={"prompt": "later [fake tokens=60 rate=60 ttft=7000]"}
        )
        generation_id = response.json()["id"]
    ws_url = cluster.url("/ws/v1").replace("http://", "ws://")
    results = await asyncio.gather(
        *(
            ws_segment(ws_url, token, generation_id, 0, None)
            if n % 2 == 0
            else sse_segment(cluster.url(web=1), token, generation_id, 0, None)
            for n in range(100)
        )
    )
    expected = expected_text(60)
    for received in results:
        assert received[-1]["type"] == "done"
        assert fold(received) == expected


def test_redis_connections_stay_bounded_while_fifty_generations_stream(cluster: Service) -> None:
    """One long-lived publishing loop per worker process: a loop per message (async_to_sync in
    a worker thread) gives channels_redis a pool per call, and connections pile up with
    every message. Here they must be bounded by the processes' concurrency, not by traffic:
    a second, identical batch of 50 generations opens next to nothing more."""
    admin = redis.Redis.from_url(cluster.env["REDIS_URL"])

    def open_connections() -> int:
        """Connections to this cluster's database only (other test runs may share Redis)."""
        clients: list[dict[str, Any]] = admin.client_list()  # type: ignore[assignment]
        return sum(1 for client in clients if str(client.get("db")) == str(cluster.redis_db))

    def batch(client: httpx.Client, label: str) -> tuple[int, int]:
        ids = [
            client.post(
                "/api/v1/generations", json={"prompt": f"{label}{n} [fake tokens=300 rate=150]"}
            ).json()["id"]
            for n in range(50)
        ]
        peak = 0
        while True:
            peak = max(peak, open_connections())
            statuses = {client.get(f"/api/v1/generations/{i}").json()["status"] for i in ids}
            if statuses <= {"completed", "failed", "cancelled"}:
                break
        assert statuses == {"completed"}
        events = sum(client.get(f"/api/v1/generations/{i}").json()["seq"] for i in ids)
        return peak, events

    before = open_connections()
    with cluster.client("busy") as client:
        first_peak, first_events = batch(client, "a")
        second_peak, second_events = batch(client, "b")
    print(
        f"Redis connections: {before} idle, peaks {first_peak} and {second_peak} "
        f"for batches of {first_events} and {second_events} events"
    )
    # Two workers with 64 Huey threads each (one blocking pop per idle thread) and two web
    # processes, plus pools sized by concurrency: about 250 here, whatever the traffic.
    assert second_peak <= first_peak + 20, (first_peak, second_peak)
    assert first_peak < 2 * 64 + 200, first_peak
