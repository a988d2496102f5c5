"""Resume: from a reconnect request to the first byte of the snapshot, for a 4,000-token
generation that is still running and for one that has completed (its snapshot comes from the
database row), over SSE and over WebSocket.

    .venv/bin/python -m bench.resume [--runs 30] [--tier embedded|distributed|both]
        [--background-streams 50]

- SSE: a new connection sends ``GET .../events`` (Authorization header, no position: a
  snapshot first); the clock runs from the connect to the first byte of the snapshot frame
  (and, separately, to the whole frame). Also a resume with ``Last-Event-ID`` half-way,
  which the replay buffer answers with events instead of a snapshot.
- WebSocket: on one already-authenticated connection, from sending ``subscribe`` to
  receiving the snapshot frame (a WebSocket message arrives whole, so first byte and whole
  frame are one time); and on a fresh connection, from the connect through ``auth`` to the
  snapshot.
- The baseline: the minimal Redis-streams SSE server (bench.baselines.streams_sse), which
  has no snapshot: a reconnect replays its stream, one entry per token, from the position.

With ``--background-streams N``, N more clients (one user each) follow generations of their
own at 50 tokens/s over WebSocket on the same Daphne process throughout the measurement
("while 50 streams run"); each starts a new one when its generation ends.

The running generation is held at 4,000 tokens by the fake provider (``hang=4000``: it sends
4,000 tokens and then nothing), so every run sees the same text. Every snapshot's text is
checked against the fake's known output.
"""

from __future__ import annotations

import asyncio
import json
import pathlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
import websockets

from bench import loadgen
from bench.latency_report import (
    command,
    machine,
    parser,
    section,
    summary_ms,
    table,
    tiers_for,
    write_result,
)
from tests.fake_openai import expected_text
from tests.harness import Service, make_token, stream_events, wait_until
from tests.tier_env import TIER

NAME = "resume"
TOKENS = 4000
# MAX_OUTPUT_TOKENS's default: the running one asks for more than the fake will send.
MAX_TOKENS = 4096
# Reconnect request -> first event, p50, on an idle service (the hot-path issue's target).
TARGET_P50_MS = 5.0
# The same with this many other streams running on the same service.
BUSY_STREAMS = 50
TARGET_P50_BUSY_MS = 20.0
QUICK_RUNS = 3
USER = "bench-resume"
# Generous: a run on a loaded machine must not fail for slowness, only for wrong text.
READ_TIMEOUT_S = 30.0
# The background streams' pace: the capacity benchmark's.
BACKGROUND_RATE_TOK_S = 50


@dataclass
class SseTiming:
    first_byte_s: float  # connect -> the first byte of the first event frame
    frame_s: float  # connect -> that whole frame
    kind: str  # snapshot | delta | done
    text: str  # the snapshot's text, or the replayed deltas' text
    seq: int


def _sse_summary(timings: list[SseTiming], whole: str) -> dict[str, Any]:
    """Times to the first byte and to the whole (`whole` names it) over the runs, but the
    first: a warm-up, not counted here nor in any measurement below."""
    return {
        "first_byte": summary_ms([timing.first_byte_s for timing in timings[1:]]),
        whole: summary_ms([timing.frame_s for timing in timings[1:]]),
    }


def _dechunk(raw: bytes) -> tuple[bytes, bytes]:
    """The data of the complete chunks at the start of a chunked body, and the rest."""
    data = b""
    while (size_end := raw.find(b"\r\n")) >= 0:
        size = int(raw[:size_end].split(b";")[0], 16)
        if len(raw) < size_end + 4 + size:
            break
        data += raw[size_end + 2 : size_end + 2 + size]
        raw = raw[size_end + 4 + size :]
    return data, raw


def _frames(body: bytes) -> list[dict[str, str]]:
    """Complete SSE frames (blank-line terminated) with data, in order."""
    frames = []
    # Only up to the last frame's end: a read may stop inside a multi-byte character.
    end = body.rfind(b"\n\n")
    if end < 0:
        return []
    complete = body[: end + 2]
    for block in complete.decode("utf-8").split("\n\n")[:-1]:
        frame: dict[str, str] = {}
        for line in block.split("\n"):
            field, _, value = line.partition(": ")
            if field in ("id", "event", "data"):
                frame[field] = value
        if "data" in frame:
            frames.append(frame)
    return frames


async def sse_resume(
    port: int, path: str, headers: dict[str, str], *, until: Callable[[list[Any]], bool]
) -> SseTiming:
    """Connect, request `path`, and time the first event frame; read on until `until` says
    the events so far are all that was wanted (e.g. the snapshot, or the replay's last).
    The client is raw HTTP/1.1: an HTTP library's own overhead would be most of what is
    measured."""
    started = time.perf_counter()
    async with loadgen.sse_response(
        "127.0.0.1", port, path, {**headers, "Connection": "close"}, READ_TIMEOUT_S
    ) as (reader, status, chunked):
        if status != 200:
            raise RuntimeError(f"{path}: HTTP {status}")
        raw = body = b""
        first_byte: float | None = None
        while True:
            data = await asyncio.wait_for(reader.read(262_144), READ_TIMEOUT_S)
            if not data:
                raise ConnectionError("the server closed the connection")
            if chunked:
                data, raw = _dechunk(raw + data)
            body += data
            if first_byte is None and b"\nevent: " in b"\n" + body:
                first_byte = time.perf_counter() - started
            events = [json.loads(frame["data"]) for frame in _frames(body)]
            if events and until(events):
                assert first_byte is not None
                first = events[0]
                if first["type"] == "snapshot":
                    text = first["text"]
                else:
                    text = "".join(e.get("text", "") for e in events if e["type"] == "delta")
                return SseTiming(
                    first_byte, time.perf_counter() - started, first["type"], text, first["seq"]
                )


class Resumer:
    """The measurements against one running service."""

    def __init__(self, service: Service, background_streams: int = 0) -> None:
        self.service = service
        self.background_streams = background_streams
        self.port = service.ports[0]
        self.url = f"ws://127.0.0.1:{self.port}/ws/v1"
        self.token = make_token(USER, ttl_s=6 * 3600)
        self.expected = expected_text(TOKENS)

    def prepare(self) -> tuple[str, str, int]:
        """(the running generation's id, the completed one's, the running one's seq)."""
        with self.service.client(USER) as client:
            running = self._create(
                client, f"resume running [fake tokens={MAX_TOKENS} rate=0 hang={TOKENS}]"
            )
            completed = self._create(client, f"resume completed [fake tokens={TOKENS} rate=0]")

            def row(generation_id: str) -> dict[str, Any]:
                response = client.get(f"/api/v1/generations/{generation_id}")
                response.raise_for_status()
                body: dict[str, Any] = response.json()
                return body

            def snapshot_text(generation_id: str) -> str:
                _, frames, _ = stream_events(client, generation_id, stop_after=1)
                return str(frames[0]["data"].get("text", "")) if frames else ""

            # The running one's row is checkpointed within CHECKPOINT_INTERVAL_S of going
            # quiet: from then on a fresh subscriber's snapshot, which comes from the row,
            # holds the whole text (a REST read has it sooner, from the log).
            wait_until(lambda: snapshot_text(running) == self.expected, timeout_s=120)
            wait_until(lambda: row(completed)["status"] == "completed", timeout_s=120)
            if row(completed)["output"] != self.expected:
                raise RuntimeError("the completed generation's output is not the fake's text")
            return running, completed, int(row(running)["seq"])

    @staticmethod
    def _create(client: httpx.Client, prompt: str) -> str:
        response = client.post(
            "/api/v1/generations", json={"prompt": prompt, "max_tokens": MAX_TOKENS}
        )
        response.raise_for_status()
        generation_id: str = response.json()["id"]
        return generation_id

    def _check_text(self, text: str, what: str) -> None:
        if text != self.expected:
            raise RuntimeError(f"{what}: the snapshot's text is not the 4,000-token text")

    async def sse(
        self, generation_id: str, runs: int, after: int | None = None, head: int = 0
    ) -> dict[str, Any]:
        """Reconnects with no position (a snapshot first), or with Last-Event-ID `after`
        (the buffer replays, read up to `head`)."""
        headers = {"Authorization": f"Bearer {self.token}"}
        path = f"/api/v1/generations/{generation_id}/events"
        if after is not None:
            headers["Last-Event-ID"] = str(after)
        timings = []
        for _ in range(runs + 1):
            if after is None:
                timing = await sse_resume(
                    self.port, path, headers, until=lambda events: events[0]["type"] == "snapshot"
                )
                if timing.kind != "snapshot":
                    raise RuntimeError(f"SSE resume from 0 began with {timing.kind}")
                self._check_text(timing.text, "SSE")
            else:
                timing = await sse_resume(
                    self.port, path, headers, until=lambda events: events[-1]["seq"] >= head
                )
                if timing.kind != "delta" or timing.seq != after + 1:
                    raise RuntimeError("SSE resume from Last-Event-ID did not replay from it")
                if not self.expected.endswith(timing.text):
                    raise RuntimeError("SSE replay: the text is not the end of the fake's")
            timings.append(timing)
        return _sse_summary(timings, "whole")

    async def ws_subscribe(self, generation_id: str, runs: int) -> dict[str, Any]:
        """On one authenticated connection: subscribe -> snapshot frame, then unsubscribe."""
        times: list[float] = []
        async with websockets.connect(self.url, max_size=None) as ws:
            await loadgen.ws_auth(ws, self.token)
            for index in range(runs + 1):
                started = time.perf_counter()
                await ws.send(
                    json.dumps({"type": "subscribe", "id": generation_id, "after": 0, "ref": index})
                )
                snapshot = await self._ws_until_snapshot(ws, generation_id)
                times.append(time.perf_counter() - started)
                self._check_text(snapshot["text"], "WebSocket")
                await ws.send(json.dumps({"type": "unsubscribe", "id": generation_id, "ref": "u"}))
                while True:
                    message = json.loads(await asyncio.wait_for(ws.recv(), READ_TIMEOUT_S))
                    if message["type"] == "unsubscribed":
                        break
        return {"snapshot": summary_ms(times[1:])}

    async def ws_fresh(self, generation_id: str, runs: int) -> dict[str, Any]:
        """A new connection each time: connect, auth, subscribe -> snapshot frame."""
        times: list[float] = []
        for _ in range(runs + 1):
            started = time.perf_counter()
            async with websockets.connect(self.url, max_size=None) as ws:
                await ws.send(json.dumps({"type": "auth", "token": self.token}))
                await ws.send(json.dumps({"type": "subscribe", "id": generation_id, "ref": 1}))
                snapshot = await self._ws_until_snapshot(ws, generation_id)
                times.append(time.perf_counter() - started)
            self._check_text(snapshot["text"], "WebSocket (fresh)")
        return {"snapshot": summary_ms(times[1:])}

    @staticmethod
    async def _ws_until_snapshot(ws: Any, generation_id: str) -> dict[str, Any]:
        while True:
            message: dict[str, Any] = json.loads(await asyncio.wait_for(ws.recv(), READ_TIMEOUT_S))
            if message["type"] == "error":
                raise RuntimeError(f"WebSocket error: {message}")
            if message["type"] == "snapshot" and message["id"] == generation_id:
                return message

    async def http_floor(self, runs: int) -> dict[str, Any]:
        """A new connection and `GET /healthz` (no database, no Redis): what any request to
        this Daphne + Django process costs, for scale."""
        times: list[float] = []
        for _ in range(runs + 1):
            started = time.perf_counter()
            async with loadgen.sse_response(
                "127.0.0.1", self.port, "/healthz", {"Connection": "close"}, READ_TIMEOUT_S
            ) as (_, status, _):
                if status != 200:
                    raise RuntimeError("/healthz did not answer 200")
                times.append(time.perf_counter() - started)
        return {"first_byte": summary_ms(times[1:])}

    async def _follow(self, index: int, streaming: asyncio.Queue[int]) -> None:
        """One background client: a generation of its own, followed to `done`, then the next."""
        token = make_token(f"{USER}-load-{index}", ttl_s=6 * 3600)
        prompt = f"resume load {index} [fake tokens={MAX_TOKENS} rate={BACKGROUND_RATE_TOK_S}]"
        generate = {"type": "generate", "prompt": prompt, "max_tokens": MAX_TOKENS}
        announced = False
        async with websockets.connect(self.url, max_size=None) as ws:
            await ws.send(json.dumps({"type": "auth", "token": token}))
            await ws.send(json.dumps(generate))
            while True:
                message = json.loads(await ws.recv())
                if message["type"] == "error":
                    raise RuntimeError(f"background stream {index}: {message}")
                if message["type"] == "delta" and not announced:
                    announced = True
                    streaming.put_nowait(index)
                elif message["type"] == "done":
                    await ws.send(json.dumps(generate))

    async def measure(self, runs: int) -> dict[str, Any]:
        running, completed, head = await asyncio.to_thread(self.prepare)
        streaming: asyncio.Queue[int] = asyncio.Queue()
        followers = [
            asyncio.create_task(self._follow(index, streaming))
            for index in range(self.background_streams)
        ]
        try:
            for _ in followers:
                await asyncio.wait_for(streaming.get(), timeout=120)
            return {
                "http_floor": await self.http_floor(runs),
                "running": {
                    "sse": await self.sse(running, runs),
                    "sse_last_event_id_half": await self.sse(running, runs, head // 2, head),
                    "ws_subscribe": await self.ws_subscribe(running, runs),
                    "ws_fresh_connection": await self.ws_fresh(running, runs),
                    "seq": head,
                },
                "completed": {
                    "sse": await self.sse(completed, runs),
                    "ws_subscribe": await self.ws_subscribe(completed, runs),
                    "ws_fresh_connection": await self.ws_fresh(completed, runs),
                },
            }
        finally:
            for follower in followers:
                follower.cancel()
            await asyncio.gather(*followers, return_exceptions=True)


def measure_service(tier: str, runs: int, background_streams: int = 0) -> dict[str, Any]:
    # The running generation's provider goes silent after 4,000 tokens: it must not time
    # out (and be retried, with new text) during the measurement.
    with Service(tier=tier, env={"PROVIDER_READ_TIMEOUT_S": "3600"}) as service:
        result = asyncio.run(Resumer(service, background_streams).measure(runs))
    return {**result, "tier": tier, "runs": runs, "background_streams": background_streams}


def measure_baseline(runs: int) -> dict[str, Any]:
    """The minimal Redis-streams SSE server: reconnect from 0 replays every token's entry."""
    from bench.capacity import start_streams

    system = start_streams()
    port = system.ports[0]
    try:
        created = httpx.post(
            f"http://127.0.0.1:{port}/api/v1/generations",
            # As fast as the producer goes (it has no "no pacing" setting); the first
            # replay below, not counted, waits for its `done`.
            json={"prompt": f"[fake tokens={TOKENS} rate=1000000]"},
        ).json()
        path = f"/api/v1/generations/{created['id']}/events"

        async def go() -> list[SseTiming]:
            return [
                await sse_resume(
                    port, path, {"Last-Event-ID": "0"}, until=lambda e: e[-1]["type"] == "done"
                )
                for _ in range(runs + 1)
            ]

        return _sse_summary(asyncio.run(go()), "whole_replay")
    finally:
        system.stop()


def _setting(result: dict[str, Any]) -> str:
    streams = result.get("background_streams") or 0
    return str(result["tier"]) + (f", {streams} streams running" if streams else ", idle")


def markdown(
    results: list[dict[str, Any]], baseline: dict[str, Any] | None, info: dict[str, Any], cmd: str
) -> str:
    labels = {
        "sse": "SSE reconnect (new connection, no position) -> first byte of the snapshot",
        "sse_last_event_id_half": "SSE reconnect with Last-Event-ID half-way -> first replayed "
        "event (no snapshot: the buffer replays)",
        "ws_subscribe": "WebSocket `subscribe` on an authenticated connection -> snapshot frame",
        "ws_fresh_connection": "WebSocket fresh connection: connect + auth + subscribe -> "
        "snapshot frame",
    }
    rows: list[list[Any]] = []
    for result in results:
        for state in ("running", "completed"):
            for kind, label in labels.items():
                row = result[state].get(kind)
                if row is None:
                    continue
                stats = row.get("first_byte") or row.get("snapshot")
                whole = row.get("whole")
                target = ""
                if state == "running" and kind in ("sse", "ws_subscribe"):
                    bound = (
                        TARGET_P50_BUSY_MS if result.get("background_streams") else TARGET_P50_MS
                    )
                    met = "met" if stats["p50_ms"] < bound else "NOT met"
                    target = f"< {bound:g} ({met})"
                rows.append(
                    [
                        _setting(result),
                        "running, 4,000 tokens" if state == "running" else "completed (row)",
                        label,
                        f"**{stats['p50_ms']}**",
                        stats["p95_ms"],
                        "" if whole is None else whole["p50_ms"],
                        target,
                    ]
                )
        floor = result["http_floor"]["first_byte"]
        rows.append(
            [
                _setting(result),
                "(none)",
                "for scale: a new connection and `GET /healthz` (no database, no Redis)",
                floor["p50_ms"],
                floor["p95_ms"],
                "",
                "",
            ]
        )
    if baseline is not None:
        rows.append(
            [
                "baseline",
                "completed, 4,000 entries",
                "minimal Redis-streams SSE server, reconnect with Last-Event-ID 0 -> first "
                "replayed event",
                f"**{baseline['first_byte']['p50_ms']}**",
                baseline["first_byte"]["p95_ms"],
                f"{baseline['whole_replay']['p50_ms']} (all 4,000)",
                "",
            ]
        )
    return section(
        "Resume",
        cmd,
        info,
        "A 4,000-token generation held running by the fake provider (`hang=4000`), and a "
        "completed 4,000-token one whose snapshot is read from the database row. Each "
        "row is the p50 over the runs (one warm-up run not counted); every snapshot's text "
        "was checked against the fake's output.",
        table(
            [
                "tier",
                "generation",
                "measured",
                "p50 (ms)",
                "p95 (ms)",
                "whole frame / replay p50 (ms)",
                "target p50 (ms)",
            ],
            rows,
        ),
        NOTE,
    )


NOTE = (
    "What a reconnect does before the snapshot's first byte. SSE: the token's user and the "
    "row in one thread hop (one database session), a channel of its own and the join of "
    "the generation's live group (on the distributed tier, Redis SUBSCRIBE round trips), "
    "the snapshot, and a read of the buffer's tail before the first flush. WebSocket "
    "`subscribe`: the owner check's row read (reused for the snapshot), the join and the "
    "buffer read, on a connection already authenticated. The `/healthz` row is what any new "
    "request costs this Daphne process at this load. What would close the distributed SSE "
    "gap: flushing the snapshot before the buffer read, joining the live group while the "
    "row is read, and a database connection kept across requests (CONN_MAX_AGE)."
)


def write(
    results_dir: pathlib.Path | None,
    results: list[dict[str, Any]],
    baseline: dict[str, Any] | None,
    cmd: str,
) -> str:
    info = machine()
    return write_result(
        results_dir,
        NAME,
        markdown(results, baseline, info, cmd),
        {
            "target_p50_ms": TARGET_P50_MS,
            "tokens": TOKENS,
            "machine": info,
            "tiers": results,
            "baseline_streams_sse": baseline,
        },
    )


def run(results_dir: pathlib.Path, quick: bool) -> None:
    """Both tiers and the baseline; `quick`: a few runs on the TEST_TIER one and the
    baseline, to see that it works."""
    runs = QUICK_RUNS if quick else 30
    tier = TIER if quick else "both"
    results = [measure_service(name, runs) for name in tiers_for(tier)]
    if not quick:
        # The resume targets hold under load too: again with streams running meanwhile.
        results += [measure_service(name, runs, BUSY_STREAMS) for name in tiers_for(tier)]
    baseline = measure_baseline(runs)
    write(
        results_dir,
        results,
        baseline,
        command(f"bench.{NAME}", ["--tier", tier, "--runs", str(runs)])
        + ("" if quick else f" (then again with --background-streams {BUSY_STREAMS})"),
    )


def main() -> None:
    args_parser = parser(__doc__, "also write resume.md/.json here")
    args_parser.add_argument("--runs", type=int, default=30)
    args_parser.add_argument("--no-baseline", action="store_true")
    args_parser.add_argument(
        "--background-streams",
        type=int,
        default=0,
        help="clients following generations at 50 tokens/s on the same Daphne meanwhile",
    )
    args = args_parser.parse_args()
    results = [
        measure_service(tier, args.runs, args.background_streams) for tier in tiers_for(args.tier)
    ]
    baseline = None if args.no_baseline else measure_baseline(args.runs)
    print(write(args.results, results, baseline, command(f"bench.{NAME}")))


if __name__ == "__main__":
    main()
