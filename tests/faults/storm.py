"""Many clients that create generations and stream them, reconnecting, while faults happen.

Each client loops until the fault phase ends: it creates a generation (REST, with an
Idempotency-Key, retried through errors), then follows it to `done` in segments: WebSocket
and SSE alternately, on either web process, cutting the connection at random points and
resuming with the last seq it has (or being cut by the fault). Some generations are
cancelled mid-way. Every message is kept; at the end each client's fold is compared,
character by character, with the generation's final `output` from `GET`.
"""

from __future__ import annotations

import asyncio
import contextlib
import difflib
import json
import random
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from jobs.events import fold
from tests.harness import Service, make_token
from tests.tier_env import RUN_DIR
from tests.wire import decoded_event, decoded_frame

TERMINAL = ("completed", "failed", "cancelled")
# A segment with nothing received for this long is given up and resumed elsewhere (SSE
# pings every 10 s; a WebSocket says nothing while a generation waits for recovery).
SEGMENT_IDLE_S = 12.0
CONNECT_TIMEOUT_S = 5.0


@dataclass
class Followed:
    """One generation as one client saw it."""

    generation_id: str
    prompt: str
    received: list[dict[str, Any]] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    reconnects: int = 0
    cancel_requested: bool = False

    @property
    def finished(self) -> bool:
        return bool(self.received) and self.received[-1]["type"] == "done"

    @property
    def position(self) -> int:
        return int(self.received[-1]["seq"]) if self.received else 0


@dataclass
class FaultRow:
    fault: str
    injected: int = 0
    seconds: float = 0.0
    started: int = 0
    completed: int = 0
    cancelled: int = 0
    failed: Counter[str] = field(default_factory=Counter)
    stuck: int = 0
    clients_without_done: int = 0
    chars_lost: int = 0
    chars_doubled: int = 0
    seq_violations: int = 0
    reconnects: int = 0
    max_attempt: int = 0
    ws_closes: Counter[int] = field(default_factory=Counter)  # close codes the server sent
    notes: list[str] = field(default_factory=list)

    def markdown(self) -> str:
        failed = sum(self.failed.values())
        reasons = ", ".join(f"{code} {n}" for code, n in sorted(self.failed.items()))
        return (
            f"| {self.fault} | {self.injected} | {self.started} | {self.completed} | "
            f"{self.cancelled} | {failed}{f' ({reasons})' if reasons else ''} | {self.stuck} | "
            f"{self.chars_lost} / {self.chars_doubled} | {self.seq_violations} | "
            f"{self.clients_without_done} | {self.reconnects} | {self.max_attempt} |"
        )


MARKDOWN_HEADER = (
    "| fault | injected | generations | completed | cancelled | failed (reason) | stuck | "
    "chars lost / doubled | gaps or duplicates | clients without `done` | reconnects | "
    "most attempts |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|---|"
)


def check_segment(segment: list[dict[str, Any]], after: int) -> list[str]:
    """PROTOCOL §3: seq+1 each time; a snapshot (first, or to repair a loss) sets the
    position and must move it forward."""
    problems = []
    position = after
    for message in segment:
        if message["type"] == "snapshot":
            if message["seq"] < position:
                problems.append(f"snapshot at {message['seq']} behind position {position}")
            position = message["seq"]
            continue
        if message["seq"] != position + 1:
            problems.append(f"{message['type']} seq {message['seq']} after {position}")
        position = message["seq"]
    return problems


def char_diff(shown: str, final: str) -> tuple[int, int]:
    """(characters of `final` missing from `shown`, characters of `shown` not in `final`)."""
    if shown == final:
        return 0, 0
    lost = doubled = 0
    matcher = difflib.SequenceMatcher(None, shown, final, autojunk=False)
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        if tag in ("replace", "delete"):
            doubled += i2 - i1
        if tag in ("replace", "insert"):
            lost += j2 - j1
    return lost, doubled


class Storm:
    def __init__(
        self,
        service: Service,
        *,
        clients: int,
        seconds: float,
        prompt: Callable[[random.Random, int], str],
        seed: int,
        cancel_share: float = 0.1,
        follow_grace_s: float = 60.0,
    ) -> None:
        self.service = service
        self.clients = clients
        self.seconds = seconds
        self.prompt = prompt
        self.cancel_share = cancel_share
        # After the fault phase, how long a client keeps trying to reach `done`.
        self.follow_grace_s = follow_grace_s
        self.rng = random.Random(seed)
        self.followed: list[tuple[str, Followed]] = []  # (username, generation)
        self.end_at = 0.0
        self.ws_closes: Counter[int] = Counter()
        # One HTTP client per web process for the whole storm: making one costs an SSL
        # context (tens of ms of CPU), which for every request would slow the clients more
        # than the faults do.
        self._http: dict[str, httpx.AsyncClient] = {}

    def _client_for(self, base_url: str) -> httpx.AsyncClient:
        client = self._http.get(base_url)
        if client is None:
            client = self._http[base_url] = httpx.AsyncClient(
                base_url=base_url,
                timeout=httpx.Timeout(10, connect=CONNECT_TIMEOUT_S),
                limits=httpx.Limits(max_connections=None, max_keepalive_connections=50),
            )
        return client

    def _web_urls(self, number: int) -> list[str]:
        urls = [self.service.url(web=i) for i in range(len(self.service.ports))]
        shift = number % len(urls)
        return urls[shift:] + urls[:shift]

    # -- one client --------------------------------------------------------------------

    async def _create(self, username: str, number: int, prompt: str) -> str | None:
        key = uuid.uuid4().hex
        headers = {"Authorization": f"Bearer {make_token(username)}", "Idempotency-Key": key}
        deadline = time.monotonic() + 60
        attempt = 0
        while time.monotonic() < deadline:
            base = self._web_urls(number + attempt)[0]
            attempt += 1
            try:
                response = await self._client_for(base).post(
                    "/api/v1/generations", json={"prompt": prompt}, headers=headers
                )
                if response.status_code in (200, 202):
                    return str(response.json()["id"])
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.3)
        return None

    async def _cancel_later(self, username: str, followed: Followed, delay_s: float) -> None:
        await asyncio.sleep(delay_s)
        followed.cancel_requested = True
        headers = {"Authorization": f"Bearer {make_token(username)}"}
        for attempt in range(40):
            base = self._web_urls(attempt)[0]
            try:
                response = await self._client_for(base).post(
                    f"/api/v1/generations/{followed.generation_id}/cancel", headers=headers
                )
                if response.status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.5)

    async def _ws_segment(
        self, url: str, token: str, followed: Followed, out: list[dict[str, Any]], cut: int | None
    ) -> None:
        ws_url = url.replace("http://", "ws://") + "/ws/v1"
        try:
            async with connect(ws_url, open_timeout=CONNECT_TIMEOUT_S, close_timeout=2) as ws:
                await self._ws_frames(ws, token, followed, out, cut)
        except ConnectionClosed as closed:
            self.ws_closes[closed.rcvd.code if closed.rcvd else 1006] += 1
            raise

    async def _ws_frames(
        self,
        ws: ClientConnection,
        token: str,
        followed: Followed,
        out: list[dict[str, Any]],
        cut: int | None,
    ) -> None:
        await ws.send(json.dumps({"type": "auth", "token": token}))
        reply = decoded_frame(await asyncio.wait_for(ws.recv(), CONNECT_TIMEOUT_S))
        if reply.get("type") != "auth.ok":
            raise ConnectionError(f"auth: {reply}")
        after = followed.position
        await ws.send(
            json.dumps({"type": "subscribe", "id": followed.generation_id, "after": after})
        )
        while True:
            frame = decoded_frame(await asyncio.wait_for(ws.recv(), SEGMENT_IDLE_S))
            if frame["type"] == "subscribed":
                continue
            if frame["type"] == "error":
                raise ConnectionError(f"error frame: {frame}")
            out.append(frame)
            if frame["type"] == "done" or (cut is not None and len(out) >= cut):
                return

    async def _sse_segment(
        self, url: str, token: str, followed: Followed, out: list[dict[str, Any]], cut: int | None
    ) -> None:
        headers = {
            "Authorization": f"Bearer {token}",
            "Last-Event-ID": str(followed.position),
        }
        timeout = httpx.Timeout(SEGMENT_IDLE_S, connect=CONNECT_TIMEOUT_S)
        async with self._client_for(url).stream(
            "GET",
            f"/api/v1/generations/{followed.generation_id}/events",
            headers=headers,
            timeout=timeout,
        ) as response:
            if response.status_code == 204:
                out.append({"type": "_204", "seq": followed.position})
                return
            if response.status_code != 200:
                raise ConnectionError(f"SSE status {response.status_code}")
            async for line in response.aiter_lines():
                if not line.startswith("data: "):
                    continue
                message = decoded_event(line[6:])
                out.append(message)
                if message["type"] == "done" or (cut is not None and len(out) >= cut):
                    return

    async def _follow(self, username: str, number: int, followed: Followed) -> None:
        token = make_token(username)
        segment_number = 0
        give_up_at = self.end_at + self.follow_grace_s
        while not followed.finished and time.monotonic() < give_up_at:
            url = self._web_urls(number + segment_number)[0]
            segment_number += 1
            cut = self.rng.randint(1, 15) if self.rng.random() < 0.5 else None
            out: list[dict[str, Any]] = []
            after = followed.position
            transport: Callable[..., Awaitable[None]] = (
                self._ws_segment if segment_number % 2 else self._sse_segment
            )
            try:
                await transport(url, token, followed, out, cut)
            except Exception:
                followed.reconnects += 1
                await asyncio.sleep(self.rng.uniform(0.1, 0.5))
            if out and out[-1]["type"] == "_204":
                followed.violations.append(f"204 at {after} before `done`")
                return
            followed.violations.extend(check_segment(out, after))
            followed.received.extend(out)

    async def _client(self, number: int) -> None:
        username = f"storm-{uuid.uuid4().hex[:8]}-{number}"
        while time.monotonic() < self.end_at:
            prompt = self.prompt(self.rng, number)
            generation_id = await self._create(username, number, prompt)
            if generation_id is None:
                continue
            followed = Followed(generation_id, prompt)
            self.followed.append((username, followed))
            cancel: asyncio.Task[None] | None = None
            if self.rng.random() < self.cancel_share:
                cancel = asyncio.create_task(
                    self._cancel_later(username, followed, self.rng.uniform(0.3, 2.5))
                )
            await self._follow(username, number, followed)
            if cancel is not None:
                cancel.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await cancel

    # -- the whole storm ------------------------------------------------------------------

    async def run(self, inject: Callable[[float], int]) -> int:
        """Clients stream for `seconds` while `inject(end_at)` (run in a thread) breaks
        things; returns what `inject` returns (how many faults it injected). Faults start
        once most clients are streaming."""
        self.end_at = time.monotonic() + self.seconds
        clients = asyncio.gather(*(self._client(n) for n in range(self.clients)))
        try:
            deadline = time.monotonic() + 10
            while len(self.followed) < self.clients * 3 // 4 and time.monotonic() < deadline:  # noqa: ASYNC110 (a poll of a plain counter)
                await asyncio.sleep(0.05)
            count = await asyncio.to_thread(inject, self.end_at)
            await clients
        except BaseException:
            clients.cancel()
            with contextlib.suppress(BaseException):
                await clients
            raise
        finally:
            for client in self._http.values():
                await client.aclose()
        return count

    def final_rows(self, settle_s: float) -> dict[str, dict[str, Any]]:
        """Every generation's final row, waiting up to `settle_s` for them to end."""
        deadline = time.monotonic() + settle_s
        rows: dict[str, dict[str, Any]] = {}
        with self.service.client(None) as client:
            while True:
                for username, followed in self.followed:
                    if rows.get(followed.generation_id, {}).get("status") in TERMINAL:
                        continue
                    with contextlib.suppress(httpx.HTTPError, ValueError):
                        response = client.get(
                            f"/api/v1/generations/{followed.generation_id}",
                            headers={"Authorization": f"Bearer {make_token(username)}"},
                        )
                        if response.status_code == 200:
                            rows[followed.generation_id] = response.json()
                if all(
                    rows.get(f.generation_id, {}).get("status") in TERMINAL
                    for _, f in self.followed
                ):
                    return rows
                if time.monotonic() > deadline:
                    return rows
                time.sleep(0.5)

    def report(self, fault: str, injected: int, rows: dict[str, dict[str, Any]]) -> FaultRow:
        row = FaultRow(fault=fault, injected=injected, seconds=self.seconds)
        row.ws_closes = self.ws_closes
        if self.ws_closes:
            codes = ", ".join(f"{code} x{n}" for code, n in sorted(self.ws_closes.items()))
            row.notes.append(f"WebSocket close codes from the server: {codes}")
        dump: list[dict[str, Any]] = []
        for _, followed in self.followed:
            final = rows.get(followed.generation_id, {})
            status = final.get("status")
            row.started += 1
            row.reconnects += followed.reconnects
            row.max_attempt = max(row.max_attempt, int(final.get("attempt") or 0))
            if status == "completed":
                row.completed += 1
            elif status == "cancelled":
                row.cancelled += 1
            elif status == "failed":
                row.failed[(final.get("error") or {}).get("code", "?")] += 1
            else:
                row.stuck += 1
            if not followed.finished:
                row.clients_without_done += 1
            shown = fold(followed.received)
            lost, doubled = char_diff(shown, final.get("output", ""))
            row.chars_lost += lost
            row.chars_doubled += doubled
            row.seq_violations += len(followed.violations)
            done_ok = followed.finished and followed.received[-1]["seq"] == final.get("seq")
            if lost or doubled or followed.violations or not done_ok or status not in TERMINAL:
                dump.append(
                    {
                        "id": followed.generation_id,
                        "prompt": followed.prompt,
                        "final": final,
                        "shown": shown,
                        "violations": followed.violations,
                        "received": followed.received,
                    }
                )
                if followed.finished and not done_ok:
                    row.notes.append(f"{followed.generation_id}: `done` seq differs from row")
        if dump:
            # A fault name may hold a slash ("worker SIGTERM / SIGINT"): not a folder.
            safe_name = "".join(c if c.isalnum() else "-" for c in fault)
            path = Path(RUN_DIR) / f"fault-{safe_name}-problems.json"
            path.write_text(json.dumps(dump, indent=1, ensure_ascii=False))
            row.notes.append(f"details in {path}")
        return row
