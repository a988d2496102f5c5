"""One retry policy for the loops that ride out a storage outage: exponential back-off, capped,
with an optional time after which the caller gives up (`sleep` then returns False at once).
Sync and asyncio forms.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


class Backoff:
    """Delays of `first_s`, doubling up to `max_s`; the give-up time counts from the first
    failure (the first `sleep`), so a loop that has run fine for hours still gets all of it."""

    def __init__(
        self,
        *,
        first_s: float,
        max_s: float,
        give_up_after_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._first_s = first_s
        self._max_s = max_s
        self._give_up_after_s = give_up_after_s
        self._clock = clock
        self._delay_s = first_s
        self._give_up_at: float | None = None

    def next_delay_s(self) -> float | None:
        """The wait before the next try, or None when it is time to give up."""
        now = self._clock()
        if self._give_up_after_s is not None:
            if self._give_up_at is None:
                self._give_up_at = now + self._give_up_after_s
            elif now > self._give_up_at:
                return None
        delay_s = self._delay_s
        self._delay_s = min(self._delay_s * 2, self._max_s)
        return delay_s

    def reset(self) -> None:
        """After a success: the next failure starts from `first_s` and a fresh give-up time."""
        self._delay_s = self._first_s
        self._give_up_at = None

    def sleep(self) -> bool:
        """Wait before the next try; False (at once) when it is time to give up."""
        delay_s = self.next_delay_s()
        if delay_s is None:
            return False
        time.sleep(delay_s)
        return True

    async def asleep(self) -> bool:
        """`sleep` on an event loop."""
        delay_s = self.next_delay_s()
        if delay_s is None:
            return False
        await asyncio.sleep(delay_s)
        return True
