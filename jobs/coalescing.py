"""When a running attempt sends the provider's text: the coalescing policy (docs/design.md,
"One generation", 3).

The first text of an attempt goes out at once (time to first token). After that, text waits
at most the coalescing interval, or until COALESCE_MAX_BYTES are waiting: tokens per second
stay the same, messages per second drop several-fold, and every message costs the same Redis
round trip, channel-layer message and frame per subscriber whatever its size.

A delta goes out when a token arrives and the next one, expected after the stream's usual gap,
would come too late to join it: in a steady stream the newest token of every delta is sent as
it arrives, and only the older ones waited. A timer sends what waits once its oldest text has
waited the whole interval (the provider paused). Each attempt flushes at its own moment, so
a process's flushes spread over the interval instead of meeting on one boundary (a burst that
queued every subscriber's frame behind the others'); those that come due in the same loop
iteration still share one round trip to Redis (jobs.engine.Batcher).
"""

from __future__ import annotations

import math
from typing import Final

COALESCE_INTERVAL_S: Final = 0.04
COALESCE_MAX_BYTES: Final = 1024
# Under load the interval widens with the generations this process runs, from
# COALESCE_INTERVAL_S at COALESCE_WIDEN_FROM up to COALESCE_MAX_INTERVAL_S: fewer, larger
# deltas are what keeps a busy process on time. The widest interval stays well inside the
# 150 ms latency budget.
COALESCE_WIDEN_FROM: Final = 10
COALESCE_MAX_INTERVAL_S: Final = 0.08
# The next token is counted on this many of the stream's usual gaps ahead: a token a little
# late must not find its predecessor already sent by the timer.
GAP_MARGIN: Final = 1.5
# How much a new gap moves the stream's usual one (an exponentially weighted mean).
GAP_WEIGHT: Final = 0.3
# A timer of the event loop may fire a little before its time (its clock and the selector's
# timeout are rounded); a flush that early is on time.
TIMER_SLACK_S: Final = 0.002


def coalesce_interval_s(running: int) -> float:
    """How long text may wait to be sent when this process runs `running` generations."""
    if running <= COALESCE_WIDEN_FROM:
        return COALESCE_INTERVAL_S
    return min(COALESCE_MAX_INTERVAL_S, COALESCE_INTERVAL_S * running / COALESCE_WIDEN_FROM)


class Coalescer:
    """The text of one attempt waiting to be sent, of one kind (`delta` or `reasoning`: they
    share the seq space, so the caller sends what waits before the kind changes)."""

    def __init__(self) -> None:
        self._parts: list[str] = []
        self._bytes = 0
        self._since = 0.0  # when the oldest text waiting arrived
        self._last_at: float | None = None  # when text last arrived
        self._gap_s = 0.0  # the stream's usual gap between texts
        self._sent = False  # whether any text has been taken

    def __bool__(self) -> bool:
        return bool(self._parts)

    def add(self, text: str, now: float, interval_s: float) -> bool:
        """Queue `text`, arrived at `now`; whether what waits is to be sent at once."""
        if self._last_at is not None:
            self._gap_s += GAP_WEIGHT * (now - self._last_at - self._gap_s)
        self._last_at = now
        if not self._parts:
            self._since = now
        self._parts.append(text)
        self._bytes += len(text)
        if not self._sent or self._bytes >= COALESCE_MAX_BYTES:
            return True
        ahead_s = max(TIMER_SLACK_S, GAP_MARGIN * self._gap_s)
        return now + ahead_s >= self.due_at(interval_s)

    def due_at(self, interval_s: float) -> float:
        """When what waits is to be sent at the latest (infinity when nothing waits)."""
        if not self._parts:
            return math.inf
        return self._since + interval_s

    def is_due(self, now: float, interval_s: float) -> bool:
        return now + TIMER_SLACK_S >= self.due_at(interval_s)

    def take(self) -> str:
        """What waits, as one text; nothing waits after."""
        text = "".join(self._parts)
        self._parts.clear()
        self._bytes = 0
        self._sent = True
        return text
