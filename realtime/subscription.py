"""One subscriber's view of one generation: gap-free, duplicate-free, in seq order, merged
from the row, the replay buffer and the live group (docs/design.md, "Subscribing without a
gap"). Run by ``realtime.session.SubscriberSession``, which joins the live group first.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from core import metrics
from core.selectors import RowState
from jobs import events
from jobs.eventlog import StoredEvent, event_log
from realtime.db import read_row

# With no live traffic, look at the buffer this often: a lost live message (even `done`)
# is then at most this late.
IDLE_CHECK_S = 2.0
# With a gap waiting to be filled, retry this often (the row is checkpointed every second).
REPAIR_RETRY_S = 0.25
# When the buffer is missing, the row is the only source: read it at most this often.
ROW_CHECK_S = 2.0
# The worker writes the final row and then publishes `done`; if it dies (or loses Redis) in
# between, the buffer, which still exists, never gets `done`, and a subscriber that only
# watched the buffer would wait for it until the buffer expires (a day). The row is the
# authority: while the buffer has nothing new, look at it this often. Only idle subscribers
# get here (live traffic means no idle checks), so this is one read per 10 s per quiet one.
QUIET_ROW_CHECK_S = 10.0

Emit = Callable[[StoredEvent], Awaitable[None]]
# A transport's way to send an event then and there, without waiting (a frame or an SSE event
# handed to the socket): what lets a live event go from the hub to the socket in one call.
EmitNow = Callable[[StoredEvent], None]


class GenerationNotFound(Exception):
    pass


class Subscription:
    def __init__(
        self, generation_id: str, after: int, emit: Emit, emit_now: EmitNow | None = None
    ) -> None:
        self.generation_id = generation_id
        self.last_seq = max(0, after)
        # Nothing sent yet and no position given: the first thing out is a snapshot.
        self.fresh = after <= 0
        self._emit = emit
        self._emit_now = emit_now
        self._pending: dict[int, StoredEvent] = {}
        # Never: the first check is due at once (the monotonic clock starts near 0 at boot,
        # so 0.0 would hold a fresh machine's first checks back by up to QUIET_ROW_CHECK_S).
        self._last_row_check = float("-inf")
        self.finished = False
        # False until `start` has run to the end. When storage interrupted it, the next
        # `on_live` or `catch_up` finishes it first (a fresh subscriber's snapshot must come
        # before any event). A partial start is safe to repeat: what it sent moved
        # `last_seq` on, and the rest continues from there.
        self.started = False
        # The session calls in from the live hub, from its backlog task and from its idle
        # timer; one subscriber's sends must not interleave.
        self._lock = asyncio.Lock()

    def next_check_in(self) -> float:
        return REPAIR_RETRY_S if self._pending else IDLE_CHECK_S

    def takes_now(self, event: StoredEvent) -> bool:
        """Whether `on_live(event)` just sends it: the next seq, nothing waiting, no merge
        step in progress (so it touches no storage)."""
        return (
            self.started
            and not self._pending
            and not self._lock.locked()
            and event.seq == self.last_seq + 1
            and not self.finished
        )

    def send_now(self, event: StoredEvent) -> bool:
        """`on_live` for an event that `takes_now`, sent in this call when the transport can
        send without waiting; False (nothing done) when it cannot. Nothing can interleave with
        a call that does not wait, so the lock is not needed."""
        if self._emit_now is None:
            return False
        self._mark_sent(event)
        self._emit_now(event)
        return True

    async def start_from(self, row: RowState) -> None:
        """A fresh subscriber's snapshot (and, for a finished row, `done`) from `row`, before
        the join: it needs nothing from the live source, and the buffer read of ``catch_up``,
        after the join, covers everything after the row's seq."""
        async with self._lock:
            if self.fresh:
                await self._from_row(row, force_snapshot=True)

    async def _start(self) -> None:
        if self.fresh:
            await self._from_row(await self._read_row(), force_snapshot=True)
        await self._catch_up()  # nothing to do once `done` is out
        self.started = True

    async def on_live(self, event: StoredEvent) -> None:
        async with self._lock:
            if self.finished or event.seq <= self.last_seq:
                return
            if self.started and event.seq == self.last_seq + 1 and not self._pending:
                await self._send(event)
                return
            self._pending[event.seq] = event
            await self._advance()

    async def catch_up(self) -> None:
        """Start (once joined to the live group), or repair: send whatever the buffer (or,
        failing that, the row) has beyond the last seq that live delivery did not bring."""
        async with self._lock:
            await self._advance()

    async def _advance(self) -> None:
        if self.started:
            await self._catch_up(repairing=True)
        else:
            # A start that storage interrupted: finish it (from a fresh row) first.
            await self._start()

    async def _catch_up(self, *, repairing: bool = False) -> None:
        if self.finished:
            return
        stored, exists = await event_log().read_after(self.generation_id, self.last_seq)
        await self._send_in_order(stored, repairing=repairing)
        if self.finished:
            return
        gap = bool(self._pending) or (bool(stored) and stored[0].seq > self.last_seq + 1)
        now = time.monotonic()
        since_row_check = now - self._last_row_check
        if (
            (gap and since_row_check >= REPAIR_RETRY_S)
            or (not exists and since_row_check >= ROW_CHECK_S)
            or (repairing and not stored and since_row_check >= QUIET_ROW_CHECK_S)
        ):
            self._last_row_check = now
            await self._from_row(await self._read_row(), force_snapshot=False)
            if not self.finished:
                stored, _ = await event_log().read_after(self.generation_id, self.last_seq)
                await self._send_in_order(stored, repairing=False)

    async def _send_in_order(self, stored: list[StoredEvent], *, repairing: bool) -> None:
        """Send the buffer's events that follow the last seq without a gap, then whatever
        waits in `_pending` after them."""
        for event in stored:
            if self.finished or event.seq != self.last_seq + 1:
                break
            if repairing and event.seq not in self._pending:
                metrics.EVENTS_REPAIRED.inc()
            await self._send(event)
        await self._drain_pending()

    async def _read_row(self) -> RowState:
        row = await read_row(self.generation_id)
        if row is None:
            raise GenerationNotFound(self.generation_id)
        return row

    async def _from_row(self, row: RowState, *, force_snapshot: bool) -> None:
        gid = self.generation_id
        if row.terminal:
            if self.last_seq >= row.seq:
                self.finished = True
                return
            # A snapshot never covers `done`: it is the fold through the seq before it.
            if force_snapshot or self.last_seq < row.seq - 1:
                await self._send_snapshot(row.seq - 1, row.output, row.status, row.reasoning)
            final = events.done(
                gid,
                row.seq,
                status=row.status,
                finish_reason=row.finish_reason,
                usage=row.usage,
                error=row.error,
            )
            await self._send(StoredEvent(row.seq, "done", events.dumps(final)))
            return
        if force_snapshot or row.seq > self.last_seq:
            await self._send_snapshot(row.seq, row.output, row.status, row.reasoning)

    async def _send_snapshot(self, seq: int, text: str, status: str, reasoning: str) -> None:
        snap = events.snapshot(self.generation_id, seq, text, status, reasoning)
        self.last_seq = seq
        self.fresh = False
        for stale in [s for s in self._pending if s <= seq]:
            del self._pending[stale]
        await self._emit(StoredEvent(seq, "snapshot", events.dumps(snap)))

    async def _send(self, event: StoredEvent) -> None:
        self._mark_sent(event)
        await self._emit(event)

    def _mark_sent(self, event: StoredEvent) -> None:
        self.last_seq = event.seq
        self._pending.pop(event.seq, None)
        if event.kind == "done":
            self.finished = True
            self._pending.clear()

    async def _drain_pending(self) -> None:
        for stale in [s for s in self._pending if s <= self.last_seq]:
            del self._pending[stale]
        while not self.finished and self.last_seq + 1 in self._pending:
            await self._send(self._pending[self.last_seq + 1])
