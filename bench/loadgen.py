"""The load generator: concurrent streaming clients in one or more asyncio processes.

Every system under test speaks the same REST shape (``POST /api/v1/generations`` ->
``{"id"}``, ``GET /api/v1/generations/{id}`` -> ``{"output"}``, SSE on ``.../events`` with
``id:`` = seq and the PROTOCOL §3 event objects), so one client measures them all; the service
also gets WebSocket clients (PROTOCOL §5) for its share of streams.

Tokens come from the fake provider with ``stamp=1`` (or a baseline producer that stamps the
same way): each token carries the wall-clock time it was sent, so a client computes, per
token, receipt time minus send time. All processes run on this one machine, so the clocks are
the same clock.

The SSE reader is a few lines of raw asyncio rather than httpx: at 25,000 events/s an HTTP
client library's per-line overhead would make the load generator the bottleneck.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import multiprocessing
import queue
import random
import re
import resource
import time
from array import array
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass, field
from typing import Any

import httpx
import jwt
from websockets.asyncio.client import connect

from tests.fake_openai import STAMP

# A stream that has not ended this long after its provider's last token is a failure.
STREAM_GRACE_S = 120.0
# Read buffer for one connection: a snapshot of a long generation arrives in one frame.
READ_LIMIT_BYTES = 4 * 1024 * 1024
# Tokens received are counted in slots of this length, for the delivered rate over a window.
SLOT_S = 0.1
# Splits a text after each token's stamp.
_TOKEN_END = re.compile(r"(?<=@\d{10}\.\d{6})")


# The service itself (distributed and embedded): its clients may use the WebSocket.
SERVICE_SYSTEMS = ("ours", "embedded")


@dataclass
class Plan:
    """What one load generator process does (picklable: it crosses a process boundary)."""

    system: str  # "ours", "embedded", "streams" or "naive"
    host: str
    ports: list[int]
    indices: list[int]  # which streams of the step this process runs
    streams: int  # all streams of the step, for the ramp
    tokens: int
    rate: float
    ttft_ms: int
    ramp_s: float
    start_at: float  # wall clock: every process starts its ramp together
    sse_share: float = 1.0
    cuts: int = 0  # disconnects per client, at random moments (reconnect test)
    reconnect_delay_s: float = 1.0
    jwt_secret: str = ""
    users: int = 50
    seed: int = 0


@dataclass
class Outcome:
    """One process's measurements."""

    streams: int = 0
    failed: int = 0
    errors: list[str] = field(default_factory=list)
    tokens: int = 0
    events: int = 0
    event_latency_s: list[float] = field(default_factory=list)
    token_latency_s: list[float] = field(default_factory=list)
    slots: dict[int, int] = field(default_factory=dict)
    first_token_at: list[float] = field(default_factory=list)
    last_token_at: list[float] = field(default_factory=list)
    mismatched: int = 0
    lost_chars: int = 0
    duplicated_chars: int = 0
    expected_chars: int = 0
    reconnects: int = 0
    cpu_s: float = 0.0


class Stream:
    """The client side of one generation: its fold and what it measured."""

    def __init__(self, outcome: Outcome, event_lat: array[float], token_lat: array[float]):
        self.outcome = outcome
        self.event_lat = event_lat
        self.token_lat = token_lat
        self.text = ""
        self.seq = 0
        self.done = False
        self.first = 0.0
        self.last = 0.0

    def apply(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        if kind == "snapshot":
            self.text = message["text"]
            self.seq = message["seq"]
        elif kind == "delta":
            now = time.time()
            text = message["text"]
            self.text += text
            self.seq = message["seq"]
            stamps = STAMP.findall(text)
            if stamps:
                for stamp in stamps:
                    self.token_lat.append(now - float(stamp))
                # The newest token's send time is the closest measured bound on the publish.
                self.event_lat.append(now - float(stamps[-1]))
                self.outcome.tokens += len(stamps)
                slot = int(now / SLOT_S)
                self.outcome.slots[slot] = self.outcome.slots.get(slot, 0) + len(stamps)
                self.first = self.first or now
                self.last = now
            self.outcome.events += 1
        elif kind == "reset":
            self.text = ""
            self.seq = message["seq"]
        elif kind == "done":
            self.seq = message["seq"]
            self.done = True


async def ws_auth(ws: Any, token: str, timeout_s: float | None = None) -> None:
    """Authenticate a new WebSocket connection: `auth`, then its `auth.ok`."""
    await ws.send(json.dumps({"type": "auth", "token": token}))
    reply = json.loads(await asyncio.wait_for(ws.recv(), timeout_s))
    if reply.get("type") != "auth.ok":
        raise RuntimeError(f"auth refused: {reply}")


@contextlib.asynccontextmanager
async def sse_response(
    host: str, port: int, path: str, headers: dict[str, str], head_timeout_s: float | None = None
) -> AsyncIterator[tuple[asyncio.StreamReader, int, bool]]:
    """`GET path` for an event stream on a new connection: (its reader, the status, whether
    the body is chunked)."""
    reader, writer = await asyncio.open_connection(host, port, limit=READ_LIMIT_BYTES)
    try:
        lines = [f"GET {path} HTTP/1.1", f"Host: {host}:{port}", "Accept: text/event-stream"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        raw = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), head_timeout_s)
        head = raw.decode("latin-1")
        yield reader, int(head.split(" ", 2)[1]), "transfer-encoding: chunked" in head.lower()
    finally:
        writer.close()


async def read_sse(
    host: str, port: int, path: str, headers: dict[str, str], stream: Stream, cut_at: float | None
) -> bool:
    """Apply one SSE response's events to `stream`. Returns False when it cut the connection
    itself at `cut_at` (wall clock), True when the response ended."""
    async with sse_response(host, port, path, headers) as (reader, status, chunked):
        if status == 204:
            stream.done = True
            return True
        if status != 200:
            raise RuntimeError(f"events: HTTP {status}")
        buffer = b""
        while True:
            if cut_at is not None and time.time() >= cut_at:
                return False
            if chunked:
                size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
                if size == 0:
                    return True
                data = (await reader.readexactly(size + 2))[:-2]
            else:
                data = await reader.read(65536)
                if not data:
                    return True
            buffer += data
            while b"\n\n" in buffer:
                frame, buffer = buffer.split(b"\n\n", 1)
                for line in frame.split(b"\n"):
                    if line.startswith(b"data:"):
                        stream.apply(json.loads(line[5:]))
                if stream.done:
                    return True


class Client:
    def __init__(self, plan: Plan, outcome: Outcome) -> None:
        self.plan = plan
        self.outcome = outcome
        self.event_lat: array[float] = array("d")
        self.token_lat: array[float] = array("d")
        self.http = httpx.AsyncClient(
            timeout=60, limits=httpx.Limits(max_connections=200, max_keepalive_connections=200)
        )

    def token(self, index: int) -> str:
        now = int(time.time())
        claims = {"sub": f"bench{index % self.plan.users}", "iat": now, "exp": now + 3600}
        return jwt.encode(claims, self.plan.jwt_secret or "unused", algorithm="HS256")

    def prompt(self, index: int) -> str:
        plan = self.plan
        return (
            f"bench {plan.seed} {index} "
            f"[fake tokens={plan.tokens} rate={plan.rate:g} ttft={plan.ttft_ms} stamp=1]"
        )

    async def run_one(self, index: int) -> None:
        plan = self.plan
        await asyncio.sleep(
            max(0.0, plan.start_at + plan.ramp_s * index / plan.streams - time.time())
        )
        stream = Stream(self.outcome, self.event_lat, self.token_lat)
        port = plan.ports[index % len(plan.ports)]
        base = f"http://{plan.host}:{port}"
        auth = {"Authorization": f"Bearer {self.token(index)}"}
        deadline_s = plan.ttft_ms / 1000 + plan.tokens / plan.rate + STREAM_GRACE_S
        # The share of SSE clients, spread evenly over the indices.
        sse = int((index + 1) * plan.sse_share) != int(index * plan.sse_share)
        try:
            if plan.system in SERVICE_SYSTEMS and not sse:
                follow = self.over_ws(index, port, stream)
            else:
                follow = self.over_sse(index, port, base, auth, stream)
            generation_id = await asyncio.wait_for(follow, deadline_s)
            reply = await self.http.get(f"{base}/api/v1/generations/{generation_id}", headers=auth)
            reply.raise_for_status()
            self.compare(stream.text, reply.json()["output"])
            if stream.first:
                self.outcome.first_token_at.append(stream.first)
                self.outcome.last_token_at.append(stream.last)
        except Exception as error:
            self.outcome.failed += 1
            if len(self.outcome.errors) < 20:
                self.outcome.errors.append(f"stream {index}: {type(error).__name__}: {error}")

    async def over_sse(
        self, index: int, port: int, base: str, auth: dict[str, str], stream: Stream
    ) -> str:
        reply = await self.http.post(
            f"{base}/api/v1/generations",
            json={"prompt": self.prompt(index), "max_tokens": self.plan.tokens + 10},
            headers=auth,
        )
        reply.raise_for_status()
        generation_id: str = reply.json()["id"]
        path = f"/api/v1/generations/{generation_id}/events"
        cuts = self.cut_times(index)
        while True:
            headers = dict(auth)
            if stream.seq:
                headers["Last-Event-ID"] = str(stream.seq)
            ended = await read_sse(
                self.plan.host, port, path, headers, stream, cuts.pop(0) if cuts else None
            )
            if ended:
                return generation_id
            # A cut: the client is away for the reconnect delay (SSE's `retry`), then resumes.
            self.outcome.reconnects += 1
            await asyncio.sleep(self.plan.reconnect_delay_s)

    def cut_times(self, index: int) -> list[float]:
        """Wall-clock moments to drop the connection, spread over the stream's life."""
        plan = self.plan
        if not plan.cuts:
            return []
        rng = random.Random(plan.seed * 100_003 + index)
        life_s = plan.ttft_ms / 1000 + plan.tokens / plan.rate
        # One cut in each equal part of the stream, so that reconnects do not pile up.
        part_s = life_s / plan.cuts
        now = time.time()
        return [now + part_s * (k + rng.uniform(0.1, 0.7)) for k in range(plan.cuts)]

    async def over_ws(self, index: int, port: int, stream: Stream) -> str:
        url = f"ws://{self.plan.host}:{port}/ws/v1"
        # No permessage-deflate: it would put compression CPU on both sides of the bench.
        async with connect(
            url, proxy=None, open_timeout=60, max_size=READ_LIMIT_BYTES, compression=None
        ) as ws:
            await ws_auth(ws, self.token(index))
            await ws.send(
                json.dumps(
                    {
                        "type": "generate",
                        "ref": "g",
                        "prompt": self.prompt(index),
                        "max_tokens": self.plan.tokens + 10,
                    }
                )
            )
            generation_id = ""
            async for raw in ws:
                message = json.loads(raw)
                kind = message.get("type")
                if kind == "created":
                    generation_id = message["generation"]["id"]
                elif kind == "error":
                    raise RuntimeError(f"ws error: {message}")
                else:
                    stream.apply(message)
                    if stream.done:
                        return generation_id
        raise RuntimeError("the WebSocket closed before done")

    def compare(self, folded: str, output: str) -> None:
        self.outcome.streams += 1
        self.outcome.expected_chars += len(output)
        if folded == output:
            return
        self.outcome.mismatched += 1
        # Every stamped token is unique (its send time is in it), so the texts compare as
        # multisets of tokens, in linear time (a character diff of two 20,000-character
        # texts with gaps takes minutes, and would stall this loop).
        have, want = Counter(_TOKEN_END.split(folded)), Counter(_TOKEN_END.split(output))
        self.outcome.lost_chars += sum(len(t) * n for t, n in (want - have).items())
        self.outcome.duplicated_chars += sum(len(t) * n for t, n in (have - want).items())

    async def run(self) -> None:
        await asyncio.gather(*(self.run_one(index) for index in self.plan.indices))
        await self.http.aclose()
        self.outcome.event_latency_s = self.event_lat.tolist()
        self.outcome.token_latency_s = self.token_lat.tolist()


def _process(plan: Plan, results: Any) -> None:
    outcome = Outcome()
    before = resource.getrusage(resource.RUSAGE_SELF)
    try:
        asyncio.run(Client(plan, outcome).run())
    except Exception as error:
        outcome.errors.append(f"load generator: {type(error).__name__}: {error}")
    after = resource.getrusage(resource.RUSAGE_SELF)
    outcome.cpu_s = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    results.put(asdict(outcome))


def run(plan: Plan, processes: int = 1) -> list[dict[str, Any]]:
    """Run `plan.indices` split over `processes` client processes; their outcomes."""
    ctx = multiprocessing.get_context("spawn")
    results = ctx.Queue()
    workers = []
    for part in range(processes):
        share = Plan(**{**asdict(plan), "indices": plan.indices[part::processes]})
        worker = ctx.Process(target=_process, args=(share, results), daemon=True)
        worker.start()
        workers.append(worker)
    # Every stream gives up STREAM_GRACE_S after its expected end, and its final GET has a
    # 60 s timeout: a process that has not reported well past that is stuck, or died.
    deadline = plan.start_at + plan.ramp_s + plan.tokens / plan.rate + STREAM_GRACE_S + 120
    outcomes = []
    for _ in workers:
        try:
            outcomes.append(results.get(timeout=max(deadline - time.time(), 1)))
        except queue.Empty:
            outcomes.append(asdict(Outcome(errors=["load generator process did not report"])))
    for worker in workers:
        worker.join(10)
        if worker.is_alive():
            worker.kill()
    return outcomes
