"""The replay buffer of each generation's event log, and its cancel flag: a Redis stream per
generation with entry ids ``0-<seq>``, appended by a Lua script that checks the attempt fence
(docs/design.md, "One generation", 3); in the embedded default the same, in this process.
Bounded (``REPLAY_MAX_EVENTS``), it expires ``REPLAY_TTL_AFTER_DONE_S`` after the generation
ends; past that, subscribers get a snapshot from the database row instead.
"""

from __future__ import annotations

import bisect
import json
import logging
import threading
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import redis
from django.conf import settings

from core.models import Generation, Status
from core.redis import async_client, sync_client
from core.retry import Backoff
from jobs.events import fold_with_reasoning

# At 25 deltas/s a 10-minute generation has 15,000 events; checkpoints every few seconds keep
# the row within a few hundred of the head, so trimming never removes an event the row lacks.
REPLAY_MAX_EVENTS = 20_000
# Long enough for a client that lost its connection in the last seconds to resume without a
# database read; after that the finished row answers every subscriber.
REPLAY_TTL_AFTER_DONE_S = 600
# A generation whose worker vanished is re-queued by the reaper within HEARTBEAT_TIMEOUT_S;
# a day bounds what a generation abandoned by every worker can leave in Redis.
REPLAY_TTL_WHILE_RUNNING_S = 24 * 3600
CANCEL_FLAG_TTL_S = 24 * 3600
CANCEL_CHANNEL = "llm:cancels"
# When a generation's log was lost (Redis restarted without persistence) after events were
# published, subscribers may have seen seqs above the row's last checkpoint that nobody can
# now name. The next writer continues this far above the row's seq: more than the deltas
# that can be published between two checkpoints (at most a few hundred per second for
# CHECKPOINT_INTERVAL_S <= 60 s), so every seq it uses is new to every subscriber. They see a
# gap the buffer cannot fill, read the row, and continue from its snapshot.
SEQ_GAP_AFTER_LOST_LOG = 100_000

logger = logging.getLogger(__name__)


def replay_ttl_s(kind: str) -> int:
    """How long a generation's buffer lives after appending an event of type `kind`."""
    return REPLAY_TTL_AFTER_DONE_S if kind == "done" else REPLAY_TTL_WHILE_RUNNING_S


@dataclass(frozen=True)
class StoredEvent:
    seq: int
    kind: str  # delta | reset | done
    data: str  # the event's JSON text, exactly as published

    def decoded(self) -> dict[str, Any]:
        result: dict[str, Any] = json.loads(self.data)
        return result


class EventLog(ABC):
    @abstractmethod
    def take_fence(self, generation_id: str, attempt: int) -> int | None:
        """Make `attempt` the only one allowed to append; return the last seq in the buffer,
        or None when there is no buffer at all (never written, expired, or lost with Redis):
        then only the row says what subscribers may have seen, and not all of it."""

    @abstractmethod
    def fence_holder(self, generation_id: str) -> int | None:
        """The attempt the log is fenced to; None when the fence is gone (Redis lost it)."""

    @abstractmethod
    def restore_fence(self, generation_id: str, attempt: int) -> bool:
        """Put back a lost fence for `attempt`, unless another attempt has fenced since.

        Only for a caller that has just proved, in the database, that it still owns
        `attempt`: a later claim always overwrites the fence, so the later attempt wins
        whichever of the two comes first."""

    @abstractmethod
    def append(self, generation_id: str, attempt: int, seq: int, kind: str, data: str) -> bool:
        """Append one event; False when the attempt is fenced off (or the fence is gone), or
        the seq is not new."""

    @abstractmethod
    def read_after_sync(self, generation_id: str, after: int) -> tuple[list[StoredEvent], bool]:
        """Events with seq > after, in order, and whether the buffer exists at all."""

    async def read_after(self, generation_id: str, after: int) -> tuple[list[StoredEvent], bool]:
        """The same, on an event loop (the embedded log's read does no I/O)."""
        return self.read_after_sync(generation_id, after)

    @abstractmethod
    def discard(self, generation_id: str) -> None:
        """Remove the generation's buffer and fence (its rows are deleted): nothing of it can
        be replayed, and a worker still running it can append nothing more."""

    @abstractmethod
    def request_cancel(self, generation_id: str) -> None:
        """Ask the worker running the generation to stop."""

    @abstractmethod
    def cancel_requested(self, generation_id: str) -> bool:
        """Whether a cancel was asked for: cheap enough to ask after every chunk."""

    def cancel_seen(self, generation_id: str) -> bool:
        """Whether this process knows of a cancel of the generation, without any I/O (the
        worker's event loop asks at every chunk)."""
        return self.cancel_requested(generation_id)

    def cancel_needs_read(self) -> bool:
        """Whether `cancel_seen` may miss a cancel, so that `cancel_requested` must read it."""
        return False

    def watch_cancels(self) -> None:  # noqa: B027  (only the Redis log needs a watcher)
        """Start receiving cancel requests in this process (a worker's, before it runs)."""


_APPEND_SCRIPT = """
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return 0 end
redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[4], '0-' .. ARGV[2], 'k', ARGV[6], 'd', ARGV[3])
redis.call('EXPIRE', KEYS[1], ARGV[5])
redis.call('EXPIRE', KEYS[2], ARGV[5])
return 1
"""

# The worker's per-tick batch (jobs.engine): every event due in one loop iteration, of any
# generation, in ONE call. Each is fenced and appended as by _APPEND_SCRIPT and, once in the
# log, published to its live channel in the same call: one round trip for the log and the
# live layer together, and an attempt that is fenced off publishes nothing either.
# KEYS: the stream and fence of each event. ARGV: the streams' MAXLEN, then the events as
# one MessagePack array (one argument, where seven per event cost the client more to encode
# than the rest of the call), each [attempt, seq, data, kind, TTL, live channel, live
# payload], the attempt as the fence holds it (a string). Answers one number per event:
# 1 appended and published, 0 fenced off or the seq taken by other data. A seq taken by this
# very event (an earlier try went through and only its reply was lost) counts as appended,
# and the event is published again.
BATCH_APPEND_SCRIPT = """
local answers = {}
local appends = cmsgpack.unpack(ARGV[2])
for i, a in ipairs(appends) do
  local stream, fence = KEYS[2 * i - 1], KEYS[2 * i]
  local added = false
  if redis.call('GET', fence) == a[1] then
    local id = '0-' .. a[2]
    added = redis.pcall('XADD', stream, 'MAXLEN', '~', ARGV[1], id, 'k', a[4], 'd', a[3])
    if type(added) == 'table' and added.err then
      local entry = redis.call('XRANGE', stream, id, id)[1]
      added = entry ~= nil and entry[2][4] == a[3]
    else
      redis.call('EXPIRE', stream, a[5])
      redis.call('EXPIRE', fence, a[5])
    end
  end
  if added then
    redis.call('PUBLISH', a[6], a[7])
    answers[i] = 1
  else
    answers[i] = 0
  end
end
return answers
"""


class RedisEventLog(EventLog):
    def __init__(self) -> None:
        self._watch_lock = threading.Lock()
        self._watcher: threading.Thread | None = None
        self._watcher_healthy = threading.Event()
        self._cancelled_here: set[str] = set()
        # Fence check and XADD in one script: nothing can re-fence between the two.
        self._append = sync_client().register_script(_APPEND_SCRIPT)

    @staticmethod
    def _stream_key(generation_id: str) -> str:
        return f"llm:log:{generation_id}"

    @staticmethod
    def _fence_key(generation_id: str) -> str:
        return f"llm:fence:{generation_id}"

    @staticmethod
    def _cancel_key(generation_id: str) -> str:
        return f"llm:cancel:{generation_id}"

    def take_fence(self, generation_id: str, attempt: int) -> int | None:
        client = sync_client()
        pipe = client.pipeline(transaction=True)
        pipe.set(
            self._fence_key(generation_id), str(attempt), ex=REPLAY_TTL_WHILE_RUNNING_S, get=True
        )
        pipe.xrevrange(self._stream_key(generation_id), count=1)
        previous_holder, last = pipe.execute()
        if last:
            return _seq_of(last[0][0])
        # A fence with no stream: an earlier attempt was fenced in and published nothing.
        # Neither: never fenced before, or Redis lost both (they are written, and expire,
        # together). A fence of this very attempt proves nothing: it may be this call's own,
        # sent again after its reply was lost; "lost" is then the safe answer (the caller
        # leaves a gap in the seqs, which costs subscribers a snapshot, never an event).
        if previous_holder is not None and previous_holder != str(attempt).encode():
            return 0
        return None

    def fence_holder(self, generation_id: str) -> int | None:
        holder: bytes | None = sync_client().get(self._fence_key(generation_id))  # type: ignore[assignment]
        return None if holder is None else int(holder)

    def restore_fence(self, generation_id: str, attempt: int) -> bool:
        # NX: a claim by a later attempt (SET without NX) may already have fenced again.
        return bool(
            sync_client().set(
                self._fence_key(generation_id), str(attempt), nx=True, ex=REPLAY_TTL_WHILE_RUNNING_S
            )
        )

    def append(self, generation_id: str, attempt: int, seq: int, kind: str, data: str) -> bool:
        ttl = replay_ttl_s(kind)
        try:
            return bool(
                self._append(
                    keys=[self._stream_key(generation_id), self._fence_key(generation_id)],
                    args=[str(attempt), str(seq), data, REPLAY_MAX_EVENTS, ttl, kind],
                )
            )
        except redis.ResponseError as exc:
            # "The ID specified in XADD is equal or smaller than the target stream top item":
            # the seq is taken (the fence was checked first, so by this attempt). If by this
            # very event, an earlier try of this append went through and only its reply was
            # lost (a dropped connection): that is a success, not a lost ownership.
            if "equal or smaller" in str(exc):
                entry_id = f"0-{seq}"
                stored: list[Any] = sync_client().xrange(  # type: ignore[assignment]
                    self._stream_key(generation_id), min=entry_id, max=entry_id
                )
                return bool(stored) and stored[0][1].get(b"d") == data.encode()
            raise

    @classmethod
    def _read_pipeline(cls, client: Any, generation_id: str, after: int) -> Any:
        key = cls._stream_key(generation_id)
        return (
            client.pipeline(transaction=False).xrange(key, min=f"(0-{after}", max="+").exists(key)
        )

    async def read_after(self, generation_id: str, after: int) -> tuple[list[StoredEvent], bool]:
        entries, exists = await self._read_pipeline(async_client(), generation_id, after).execute()
        return _decode_entries(entries), bool(exists)

    def read_after_sync(self, generation_id: str, after: int) -> tuple[list[StoredEvent], bool]:
        entries, exists = self._read_pipeline(sync_client(), generation_id, after).execute()
        return _decode_entries(entries), bool(exists)

    def discard(self, generation_id: str) -> None:
        # The cancel flag stays (it expires by itself): a worker still running the
        # generation must keep seeing it.
        sync_client().delete(self._stream_key(generation_id), self._fence_key(generation_id))

    def request_cancel(self, generation_id: str) -> None:
        pipe = sync_client().pipeline(transaction=False)
        pipe.set(self._cancel_key(generation_id), "1", ex=CANCEL_FLAG_TTL_S)
        pipe.publish(CANCEL_CHANNEL, generation_id)
        pipe.execute()

    def cancel_requested(self, generation_id: str) -> bool:
        # A Redis round trip per chunk would cost more CPU than the chunk itself: workers
        # learn of cancels by pub/sub into a local set. The key is the durable record, read
        # once at claim time and again when the pub/sub link has been down.
        if generation_id in self._cancelled_here:
            return True
        if self._watcher_healthy.is_set():
            return False
        try:
            return bool(sync_client().exists(self._cancel_key(generation_id)))
        except redis.RedisError:
            return False

    def cancel_seen(self, generation_id: str) -> bool:
        return generation_id in self._cancelled_here

    def cancel_needs_read(self) -> bool:
        return not self._watcher_healthy.is_set()

    def watch_cancels(self) -> None:
        with self._watch_lock:
            if self._watcher is None:
                self._watcher = threading.Thread(
                    target=self._watch, name="cancel-watcher", daemon=True
                )
                self._watcher.start()

    def _watch(self) -> None:
        # Forever: while it is down, attempts read the cancel key from Redis themselves.
        backoff = Backoff(first_s=0.1, max_s=5.0)
        while True:
            try:
                pubsub = sync_client().pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call]
                pubsub.subscribe(CANCEL_CHANNEL)
                self._watcher_healthy.set()
                backoff.reset()
                while True:
                    message = pubsub.get_message(timeout=1.0)
                    if message and message["type"] == "message":
                        with self._watch_lock:
                            self._cancelled_here.add(message["data"].decode())
                            if len(self._cancelled_here) > 100_000:
                                self._cancelled_here.clear()
            except Exception:
                self._watcher_healthy.clear()
                logger.warning("cancel watcher lost Redis; retrying", exc_info=True)
                backoff.sleep()


def _decode_entries(
    entries: list[tuple[bytes, dict[bytes, bytes]]],
) -> list[StoredEvent]:
    return [
        StoredEvent(_seq_of(eid), fields[b"k"].decode(), fields[b"d"].decode())
        for eid, fields in entries
    ]


def _seq_of(entry_id: bytes) -> int:
    return int(entry_id.split(b"-", 1)[1])


@dataclass
class _MemoryLog:
    attempt: int = 0
    events: list[StoredEvent] = field(default_factory=list)
    expires_at: float = 0.0


class MemoryEventLog(EventLog):
    """The embedded default's buffer: the same contract, kept in this process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._logs: dict[str, _MemoryLog] = {}
        self._cancelled: dict[str, float] = {}
        self._next_sweep = 0.0

    def _sweep(self, now: float) -> None:
        if now < self._next_sweep:
            return
        self._next_sweep = now + 30
        for key in [k for k, log in self._logs.items() if log.expires_at < now]:
            del self._logs[key]
        for key in [k for k, t in self._cancelled.items() if t < now]:
            del self._cancelled[key]

    def take_fence(self, generation_id: str, attempt: int) -> int | None:
        now = time.monotonic()
        with self._lock:
            self._sweep(now)
            log = self._logs.get(generation_id)
            last: int | None = None
            if log is None or log.expires_at < now:
                log = self._logs[generation_id] = _MemoryLog()
            else:
                last = log.events[-1].seq if log.events else 0
            log.attempt = attempt
            log.expires_at = now + REPLAY_TTL_WHILE_RUNNING_S
            return last

    def fence_holder(self, generation_id: str) -> int | None:
        with self._lock:
            log = self._logs.get(generation_id)
            return None if log is None else log.attempt

    def restore_fence(self, generation_id: str, attempt: int) -> bool:
        # The embedded log is lost only with the process, and its workers with it.
        return False

    def append(self, generation_id: str, attempt: int, seq: int, kind: str, data: str) -> bool:
        now = time.monotonic()
        with self._lock:
            log = self._logs.get(generation_id)
            if log is None or log.attempt != attempt:
                return False
            if log.events and log.events[-1].seq >= seq:
                # The seq is taken: by this very event (a retried append) that is done, as in
                # the Redis log; by another, this attempt has lost its place.
                return any(e.seq == seq and e.data == data for e in reversed(log.events))
            log.events.append(StoredEvent(seq, kind, data))
            if len(log.events) > REPLAY_MAX_EVENTS:
                del log.events[: len(log.events) - REPLAY_MAX_EVENTS]
            log.expires_at = now + replay_ttl_s(kind)
            return True

    def read_after_sync(self, generation_id: str, after: int) -> tuple[list[StoredEvent], bool]:
        with self._lock:
            log = self._logs.get(generation_id)
            if log is None or log.expires_at < time.monotonic():
                return [], False
            # Seqs are strictly increasing: bisect for the first one above `after`.
            first = bisect.bisect_right(log.events, after, key=lambda event: event.seq)
            return log.events[first:], True

    def discard(self, generation_id: str) -> None:
        with self._lock:
            self._logs.pop(generation_id, None)

    def request_cancel(self, generation_id: str) -> None:
        with self._lock:
            self._cancelled[generation_id] = time.monotonic() + CANCEL_FLAG_TTL_S

    def cancel_requested(self, generation_id: str) -> bool:
        with self._lock:
            return generation_id in self._cancelled


@cache
def event_log() -> EventLog:
    return RedisEventLog() if settings.DISTRIBUTED else MemoryEventLog()


def generation_now(generation: Generation) -> dict[str, Any]:
    """The generation object (PROTOCOL §2) as its readers would see it now: a running row's
    checkpoint (at most CHECKPOINT_INTERVAL_S old) with the text logged after it folded in,
    so that a REST read mid-stream shows the output so far, with an `output` and a `seq` that
    agree (a subscription `after` that seq continues it exactly). The row as it is when it is
    not running, or as far as the log follows on from its checkpoint without a gap (the log
    may be trimmed, lost or unreachable)."""
    body = generation.to_dict()
    if generation.status != Status.RUNNING:
        return body
    try:
        logged, _ = event_log().read_after_sync(generation.pk, generation.seq)
    except redis.RedisError:
        return body
    following: list[dict[str, Any]] = []
    for event in logged:
        if event.seq != body["seq"] + len(following) + 1 or event.kind == "done":
            break
        following.append(event.decoded())
    if following:
        body["output"], body["reasoning"] = fold_with_reasoning(
            following, body["output"], body["reasoning"]
        )
        body["seq"] += len(following)
    return body
