"""One subscriber's session with one generation, the same for the WebSocket and SSE: the
transports keep only their framing (docs/design.md, "Subscribing without a gap").

The hub's call sends the next seq straight away; anything else (a gap, an event during the
first reads) waits in a backlog that a task of the session feeds to the merge, so that one
subscriber's repair never holds up the process's others.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable

from core.errors import UNAVAILABLE_ERRORS
from core.selectors import RowState
from jobs.eventlog import StoredEvent
from jobs.writer import group_name
from realtime.live import LiveHub, live_hub
from realtime.subscription import Emit, EmitNow, GenerationNotFound, Subscription

logger = logging.getLogger(__name__)


class SubscriberSession:
    """One subscriber of one generation; `emit` frames an event for the transport, `on_end`
    tells it the session is over (the generation finished, or no longer exists)."""

    def __init__(
        self,
        generation_id: str,
        after: int,
        emit: Emit,
        on_end: Callable[[], None],
        emit_now: EmitNow | None = None,
    ) -> None:
        """`emit_now`, when the transport has one, sends an event without waiting: a live
        event then goes from the hub to the socket in one call."""
        self.generation_id = generation_id
        self.subscription = Subscription(generation_id, after, emit, emit_now)
        self._on_end = on_end
        self._group = group_name(generation_id)
        self._hub: LiveHub | None = None
        self._watch_key: int | None = None
        # False until the first reads have run (or were deferred by an outage): live events
        # that come before wait in the backlog, behind the snapshot.
        self._ready = False
        self._backlog: deque[StoredEvent] = deque()
        self._feeder: asyncio.Task[None] | None = None
        self._timer: asyncio.Task[None] | None = None
        self._active_at = time.monotonic()
        self.ended = False

    async def begin(self, row: RowState) -> None:
        """A fresh subscriber's snapshot from `row` at once, before the join and the buffer
        read (a resume's first frame waits for no round trip to Redis). A finished row also
        gives `done`, and the session ends here, having joined nothing."""
        await self._step(self.subscription.start_from(row))
        self._end_if_finished()

    async def open(self, row: RowState | None = None, *, retry_join: bool) -> None:
        """`begin` with `row` if given, then join the live source and catch up to the present
        (`row` may have been read before the join: the buffer covers everything after it).

        A failed join raises unless `retry_join` (then the idle timer joins once storage is
        back, and catches up).
        """
        if row is not None:
            await self.begin(row)
        if self.ended:
            return
        try:
            await self._watch()
        except UNAVAILABLE_ERRORS as failure:
            if not retry_join:
                raise
            logger.warning("joining %s deferred: %r", self.generation_id, failure)
        else:
            await self.check()
        if not self.ended:
            self._active_at = time.monotonic()
            self._timer = asyncio.get_running_loop().create_task(self._run_timer())

    def close(self) -> None:
        """Stop: nothing more is emitted, and the hub is told at once."""
        self.ended = True
        if self._hub is not None and self._watch_key is not None:
            self._hub.unwatch(self._group, self._watch_key)
            self._watch_key = None
        current = asyncio.current_task()
        for task in (self._timer, self._feeder):
            if task is not None and task is not current:
                task.cancel()

    async def _watch(self) -> None:
        # The hub the session joined is the one it leaves (a test may swap the layer).
        hub = live_hub()
        self._watch_key = await hub.watch(self._group, self._on_live)
        self._hub = hub

    # -- live events ------------------------------------------------------------------------

    def _on_live(self, event: StoredEvent) -> Awaitable[None] | None:
        """From the hub, in arrival order; must not wait on storage. None when the event was
        dealt with in this call (sent, queued or dropped), else the send to await."""
        if self.ended:
            return None
        self._active_at = time.monotonic()
        subscription = self.subscription
        if self._ready and not self._backlog and subscription.takes_now(event):
            if subscription.send_now(event):
                self._end_if_finished()
                return None
            return self._send_live(event)
        if event.seq <= subscription.last_seq:
            return None
        self._backlog.append(event)
        if self._ready:
            self._feed()
        return None

    async def _send_live(self, event: StoredEvent) -> None:
        await self.subscription.on_live(event)
        self._end_if_finished()

    def _feed(self) -> None:
        if self._feeder is None and not self.ended:
            self._feeder = asyncio.get_running_loop().create_task(self._feed_backlog())

    async def _feed_backlog(self) -> None:
        try:
            while self._backlog and not self.ended:
                await self._step(self.subscription.on_live(self._backlog.popleft()))
                if self._end_if_finished():
                    return
        finally:
            self._feeder = None

    # -- the idle timer ---------------------------------------------------------------------

    async def _run_timer(self) -> None:
        while not self.ended:
            delay_s = self._active_at + self.subscription.next_check_in() - time.monotonic()
            if delay_s > 0:
                await asyncio.sleep(delay_s)
                continue
            self._active_at = time.monotonic()
            await self.check()

    async def check(self) -> None:
        """Look at the buffer (and the row) for anything live delivery missed; join first if
        the join failed, and finish a start that storage interrupted."""
        if self.ended:
            return
        if self._watch_key is None:
            try:
                await self._watch()
            except UNAVAILABLE_ERRORS as failure:
                logger.warning("joining %s deferred: %r", self.generation_id, failure)
                return
            if self.ended:  # closed while joining
                self.close()
                return
        await self._step(self.subscription.catch_up())
        self._ready = True
        if not self._end_if_finished() and self._backlog:
            self._feed()

    # -- outcomes ---------------------------------------------------------------------------

    async def _step(self, step: Awaitable[None]) -> None:
        """Run one step of the merge; while the database or Redis is unreachable, it is left
        for the next check (a live event waits in the subscription, a start is retried)."""
        try:
            await step
        except GenerationNotFound:
            self._end()
        except UNAVAILABLE_ERRORS as failure:
            logger.warning("events of %s deferred: %r", self.generation_id, failure)
        except Exception:
            logger.warning("catch-up failed for %s", self.generation_id, exc_info=True)

    def _end_if_finished(self) -> bool:
        if self.subscription.finished:
            self._end()
        return self.ended

    def _end(self) -> None:
        if not self.ended:
            self.close()
            self._on_end()
