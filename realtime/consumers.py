"""The WebSocket endpoint /ws/v1 (PROTOCOL §5): one connection, any number of generations.

Every subscription is a ``realtime.session.SubscriberSession``, the same code the SSE view
uses; this consumer only adds the frame protocol, authentication and multiplexing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
import uuid
from collections.abc import Coroutine
from typing import Any
from urllib.parse import urlsplit

from channels.consumer import AsyncConsumer, get_handler_name
from channels.exceptions import StopConsumer
from django.conf import settings

from api import services
from api.auth import Identity, authenticate_token
from api.conversations import (
    conversation_for_user,
    conversation_group,
    conversation_state,
    parse_turn_target,
    turns_after,
)
from api.validation import encodable, parse_generation_params, parse_idempotency_key
from core import metrics
from core.errors import UNAVAILABLE_ERRORS, ApiError, not_found, parse_json, unavailable
from core.selectors import Limits, RowState, limits_for, row_state_of
from jobs.eventlog import StoredEvent
from jobs.events import dumps
from realtime.connections import connection_registry
from realtime.daphne_ext import text_sender
from realtime.db import read, read_row, write
from realtime.frames import (
    CLOSE_AUTH_TIMEOUT,
    CLOSE_TOO_BIG,
    CLOSE_TOO_MANY_CONNECTIONS,
    CLOSE_TRY_AGAIN_LATER,
    CLOSE_UNAUTHORIZED,
    CLOSE_UNSUPPORTED_DATA,
    closing_error,
    echoable,
    error_reply,
)
from realtime.live import live_hub
from realtime.session import SubscriberSession
from realtime.upkeep import connection_upkeep

logger = logging.getLogger(__name__)

MAX_FRAME_BYTES = 64 * 1024  # PROTOCOL §5: larger frames close the connection with 1009

_GENERATE_FIELDS = frozenset({"type", "ref", "idempotency_key"})
# The largest `after` accepted: seqs never come near it, and Redis (ZRANGEBYSCORE, INCR)
# handles integers up to 2**63 - 1 only; 2**64 used to drop the connection in distributed mode.
MAX_SEQ = 2**53


def frame_burst() -> int:
    """Frames a connection may send at once before WS_FRAMES_PER_SECOND applies."""
    return int(2 * settings.WS_FRAMES_PER_SECOND)


# Conversation subscriptions of one connection; each costs a group membership and a poll.
MAX_CONVERSATION_SUBSCRIPTIONS = 50
# How often a connection reads the turns of the conversations it follows, in case a live
# notice was lost: the longest a turn started elsewhere waits to be announced then.
CONVERSATION_POLL_S = 5.0


def _identity_and_limits(token: str, *, first: bool) -> tuple[Identity, Limits | None]:
    """The token's identity and, for a connection's first `auth`, its user's limits: one
    database session."""
    identity = authenticate_token(token)
    return identity, limits_for(identity.user.pk) if first else None


class FrameError(Exception):
    def __init__(self, error: ApiError, generation_id: str | None = None) -> None:
        super().__init__(error.message)
        self.error = error
        self.generation_id = generation_id


def _position(
    frame: dict[str, Any], maximum: float = math.inf, generation_id: str | None = None
) -> int:
    """The frame's `after`: 0 when absent or null."""
    after = frame.get("after")
    if after is None:
        return 0
    if isinstance(after, bool) or not isinstance(after, int) or not 0 <= after <= maximum:
        raise FrameError(
            ApiError(
                "invalid_request",
                "after must be a non-negative integer.",
                details={"after": "A non-negative integer."},
            ),
            generation_id,
        )
    return after


def _id_field(frame: dict[str, Any], key: str, what: str) -> str:
    value = frame.get(key)
    # Encodable: the id is echoed in replies, and a lone surrogate cannot be sent.
    if not isinstance(value, str) or not value or not encodable(value):
        raise FrameError(ApiError("invalid_request", f"{key} is required.", details={key: what}))
    return value


def origin_allowed(scope: dict[str, Any]) -> bool:
    """A browser's Origin must be ours or listed; clients that send none are allowed."""
    headers = dict(scope.get("headers") or [])
    origin = headers.get(b"origin")
    if origin is None:
        return True
    origin_text = origin.decode("latin-1").rstrip("/")
    if origin_text in settings.ALLOWED_ORIGINS or "*" in settings.ALLOWED_ORIGINS:
        return True
    host = headers.get(b"host", b"").decode("latin-1")
    return bool(host) and urlsplit(origin_text).netloc == host


class StreamConsumer(AsyncConsumer):  # type: ignore[misc]
    """Handles one WebSocket connection."""

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        """channels' consumer loop, without a channel of its own on the channel layer: it
        would cost a subscribe and an unsubscribe on Redis per connection, and a task per
        message waiting on it, and nothing is ever sent to it (live events and conversation
        notices come through the process's live hub, realtime/live.py)."""
        self.scope = scope
        self.base_send = send
        # Under Daphne, live events' frames go to the socket without ASGI's layers.
        self.send_text = text_sender(send)
        try:
            while True:
                await self.dispatch(await receive())
        except StopConsumer:
            pass

    async def dispatch(self, message: dict[str, Any]) -> None:
        """Channels' dispatch, without the `close_old_connections` it runs on a thread before
        every message: this consumer's database work runs on realtime.db's threads, which
        look after their own connections, so that thread hop (on one thread shared by every
        connection of the process) did nothing but cost."""
        handler = getattr(self, get_handler_name(message), None)
        if handler is None:
            raise ValueError(f"No handler for message type {message['type']}")
        await handler(message)

    async def websocket_connect(self, message: dict[str, Any]) -> None:
        # Set by the first `auth` once the connection is in the per-user registry.
        self.identity: Identity | None = None
        self.connection_id = uuid.uuid4().hex
        self.sessions: dict[str, SubscriberSession] = {}
        self.closed = False
        self.counted_open = False  # in WEBSOCKETS_OPEN, once accepted
        # Cancelled at disconnect: timers, the conversation poller, a notice's reads.
        self.tasks: set[asyncio.Task[None]] = set()
        self.expiry_task: asyncio.Task[None] | None = None
        self.upkeep_key: int | None = None  # in the process's connection upkeep
        self.frame_allowance = float(frame_burst())
        self.frame_allowance_at = time.monotonic()
        # Followed conversations: each one's position, and its key in the process's live hub.
        self.conversation_positions: dict[str, int] = {}
        self.conversation_watches: dict[str, int] = {}
        self.conversation_lock = asyncio.Lock()
        self.conversation_poller: asyncio.Task[None] | None = None
        if not origin_allowed(self.scope):
            await self.send({"type": "websocket.close"})  # before accept: HTTP 403
            return
        await self.send({"type": "websocket.accept"})
        metrics.WEBSOCKETS_OPEN.inc()
        self.counted_open = True
        self._spawn(self._auth_deadline())

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(coroutine)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    # -- lifecycle -------------------------------------------------------------------------

    async def _auth_deadline(self) -> None:
        await asyncio.sleep(settings.WS_AUTH_TIMEOUT)
        if self.identity is None:
            await self._close(CLOSE_AUTH_TIMEOUT)

    async def _expire_at(self, expires_at: int) -> None:
        await asyncio.sleep(max(0.0, expires_at - time.time()))
        if self.identity is not None and self.identity.expires_at <= time.time():
            await self._send_json(
                closing_error(ApiError("token_expired", "The token has expired."))
            )
            await self._close(CLOSE_UNAUTHORIZED)

    async def _close(self, code: int) -> None:
        if self.closed:
            return
        self.closed = True
        await self.send({"type": "websocket.close", "code": code})

    async def websocket_disconnect(self, message: dict[str, Any]) -> None:
        self.closed = True
        if self.counted_open:
            metrics.WEBSOCKETS_OPEN.dec()
        for task in list(self.tasks):
            task.cancel()
        if self.upkeep_key is not None:
            connection_upkeep().discard(self.upkeep_key)
            self.upkeep_key = None
        for session in self.sessions.values():
            session.close()
        if self.identity is not None:
            with contextlib.suppress(Exception):
                await connection_registry().remove(self.identity.user.pk, self.connection_id)
        for conversation_id in list(self.conversation_watches):
            self._unwatch_conversation(conversation_id)
        raise StopConsumer()

    # -- frames in -------------------------------------------------------------------------

    async def websocket_receive(self, message: dict[str, Any]) -> None:
        if self.closed:
            return
        text = message.get("text")
        if text is None:
            await self._close(CLOSE_UNSUPPORTED_DATA)
            return
        if len(text) > MAX_FRAME_BYTES // 4 and len(text.encode("utf-8")) > MAX_FRAME_BYTES:
            await self._close(CLOSE_TOO_BIG)
            return
        ref: Any = None
        frame: Any = None
        try:
            self._count_frame()
            frame = parse_json(text, "frame")
            if not isinstance(frame, dict):
                raise FrameError(ApiError("invalid_request", "A frame must be a JSON object."))
            ref = frame.get("ref")
            if not echoable(ref):
                ref = None
                raise FrameError(
                    ApiError(
                        "invalid_request",
                        "ref cannot be echoed.",
                        details={"ref": "JSON text that is valid Unicode (no lone surrogates)."},
                    )
                )
            kind = frame.get("type")
            if self.identity is None and kind != "auth":
                await self._close(CLOSE_UNAUTHORIZED)
                return
            handlers = {
                "auth": self._auth,
                "generate": self._generate,
                "subscribe": self._subscribe,
                "unsubscribe": self._unsubscribe,
                "cancel": self._cancel,
                "ping": self._ping,
                "subscribe_conversation": self._subscribe_conversation,
                "unsubscribe_conversation": self._unsubscribe_conversation,
            }
            handler = handlers.get(kind if isinstance(kind, str) else "")
            if handler is None:
                raise FrameError(
                    ApiError(
                        "invalid_request",
                        "Unknown frame type.",
                        details={"type": f"One of {', '.join(handlers)}."},
                    )
                )
            await handler(frame, ref)
        except UNAVAILABLE_ERRORS as failure:
            # The database or Redis is unreachable: not the client's fault and not a bug.
            logger.warning("a dependency is unreachable on the WebSocket: %r", failure)
            frame_id = frame.get("id") if isinstance(frame, dict) else None
            await self._send_json(
                error_reply(unavailable(), ref, frame_id if isinstance(frame_id, str) else None)
            )
            if self.identity is None:
                await self._close(CLOSE_TRY_AGAIN_LATER)
        except (FrameError, ApiError) as failure:
            if self.identity is None:
                # Before auth, a frame that is not an auth object (not JSON, not an object)
                # is "any other frame": close 4401 rather than wait out WS_AUTH_TIMEOUT.
                await self._close(CLOSE_UNAUTHORIZED)
            elif isinstance(failure, FrameError):
                await self._send_json(error_reply(failure.error, ref, failure.generation_id))
            else:
                await self._send_json(error_reply(failure, ref))
        except Exception:
            # A frame no rule above foresaw: never a 1011 and a traceback for the client.
            logger.exception("unhandled error in a WebSocket frame")
            if self.identity is None:
                await self._close(CLOSE_UNAUTHORIZED)
            else:
                await self._send_json(
                    error_reply(ApiError("internal_error", "Something went wrong."), ref)
                )

    async def _auth(self, frame: dict[str, Any], ref: Any) -> None:
        token = frame.get("token")
        try:
            if not isinstance(token, str) or not token:
                raise ApiError("unauthorized", "A token is required.")
            first = self.identity is None
            identity, limits = await read(_identity_and_limits, token, first=first)
            if self.identity is not None and identity.user.pk != self.identity.user.pk:
                raise ApiError("unauthorized", "The token is for another user.")
        except ApiError as error:
            await self._send_json(error_reply(ApiError("unauthorized", error.message), ref))
            await self._close(CLOSE_UNAUTHORIZED)
            return
        if limits is not None:
            if not await connection_registry().add(
                identity.user.pk, self.connection_id, limits.max_connections
            ):
                refusal = ApiError(
                    "rate_limited", f"At most {limits.max_connections} connections per user."
                )
                await self._send_json(closing_error(refusal, ref))
                metrics.REJECTIONS.labels(code="too_many_connections").inc()
                await self._close(CLOSE_TOO_MANY_CONNECTIONS)
                return
            # Its registry entry refreshed and its account re-checked with the process's
            # other connections, until it closes.
            self.upkeep_key = connection_upkeep().add(
                identity.user.pk, self.connection_id, self._account_gone
            )
        self.identity = identity
        if self.expiry_task is not None:
            self.expiry_task.cancel()
        self.expiry_task = self._spawn(self._expire_at(identity.expires_at))
        await self._send_json(
            {
                "type": "auth.ok",
                "ref": ref,
                "user": identity.username,
                "expires_at": identity.expires_at,
            }
        )

    async def _generate(self, frame: dict[str, Any], ref: Any) -> None:
        assert self.identity is not None
        self._ensure_subscription_room(None)
        params = parse_generation_params(frame, extra_fields=_GENERATE_FIELDS)
        key = parse_idempotency_key(frame.get("idempotency_key"))
        generation, _ = await write(
            services.generation_create,
            user=self.identity.user,
            params=params,
            idempotency_key=key,
            target=parse_turn_target(frame),
        )
        await self._send_json({"type": "created", "ref": ref, "generation": generation.to_dict()})
        # The row as the create wrote (or, for a repeat, read) it is the snapshot's: no read
        # for it.
        await self._start_subscription(generation.id, 0, row_state_of(generation))

    async def _subscribe(self, frame: dict[str, Any], ref: Any) -> None:
        assert self.identity is not None
        generation_id = _id_field(frame, "id", "A generation id.")
        self._ensure_subscription_room(generation_id)
        after = _position(frame, MAX_SEQ, generation_id)
        row = await read_row(generation_id)
        if row is None or row.user_id != self.identity.user.pk:
            raise FrameError(not_found(), generation_id)
        await self._send_json({"type": "subscribed", "ref": ref, "id": generation_id})
        if row.terminal and after >= row.seq:
            self._drop_subscription(generation_id)
            return  # already has everything, `done` included
        # The owner check's row serves as the snapshot's: no second database read.
        await self._start_subscription(generation_id, after, row)

    async def _start_subscription(
        self, generation_id: str, after: int, row: RowState | None = None
    ) -> None:
        """`row` may have been read before the join: the buffer covers everything after it."""
        self._drop_subscription(generation_id)

        send_text = self.send_text

        async def emit(event: StoredEvent) -> None:
            # A session's timer may be inside its catch-up while `unsubscribe` (or a new
            # `subscribe` to the same id) replaces it: nothing of it may follow the reply.
            if self.sessions.get(generation_id) is session and not self.closed:
                if send_text is not None:
                    send_text(event.data)
                else:
                    await self.send({"type": "websocket.send", "text": event.data})

        def emit_now(event: StoredEvent) -> None:
            assert send_text is not None
            if self.sessions.get(generation_id) is session and not self.closed:
                send_text(event.data)

        def ended() -> None:
            if self.sessions.get(generation_id) is session:
                del self.sessions[generation_id]

        session = SubscriberSession(
            generation_id, after, emit, ended, emit_now if send_text is not None else None
        )
        self.sessions[generation_id] = session
        # The client was told `subscribed` (or `created`): if storage is down, it gets its
        # events once storage is back, without having to ask again.
        await session.open(row, retry_join=True)

    def _drop_subscription(self, generation_id: str) -> None:
        session = self.sessions.pop(generation_id, None)
        if session is not None:
            session.close()

    async def _unsubscribe(self, frame: dict[str, Any], ref: Any) -> None:
        generation_id = _id_field(frame, "id", "A generation id.")
        self._drop_subscription(generation_id)
        await self._send_json({"type": "unsubscribed", "ref": ref, "id": generation_id})

    async def _cancel(self, frame: dict[str, Any], ref: Any) -> None:
        assert self.identity is not None
        generation_id = _id_field(frame, "id", "A generation id.")
        try:
            await write(
                services.generation_cancel,
                user=self.identity.user,
                generation_id=generation_id,
                wait_s=0,
            )
        except ApiError as error:
            raise FrameError(error, generation_id) from None
        await self._send_json({"type": "ack", "ref": ref, "id": generation_id})

    async def _ping(self, frame: dict[str, Any], ref: Any) -> None:
        await self._send_json({"type": "pong", "ref": ref})

    # -- abuse limits: frame rate, subscriptions per connection, deactivated accounts -------

    def _count_frame(self) -> None:
        """A token bucket per connection: WS_FRAMES_PER_SECOND, bursts of frame_burst()."""
        now = time.monotonic()
        rate = settings.WS_FRAMES_PER_SECOND
        self.frame_allowance = min(
            float(frame_burst()), self.frame_allowance + (now - self.frame_allowance_at) * rate
        )
        self.frame_allowance_at = now
        if self.frame_allowance < 1:
            metrics.REJECTIONS.labels(code="rate_limited").inc()
            raise FrameError(
                ApiError(
                    "rate_limited",
                    f"Too many frames: at most {rate} per second on one connection; "
                    "this frame was not processed.",
                    retry_after_s=1,
                )
            )
        self.frame_allowance -= 1

    def _ensure_subscription_room(self, generation_id: str | None) -> None:
        """Refuse a new subscription past MAX_SUBSCRIPTIONS_PER_CONNECTION (replacing an
        existing subscription to the same id is always allowed)."""
        limit = settings.MAX_SUBSCRIPTIONS_PER_CONNECTION
        if generation_id in self.sessions or len(self.sessions) < limit:
            return
        raise FrameError(
            ApiError(
                "rate_limited",
                f"At most {limit} subscriptions per connection: unsubscribe from one first.",
                details={"max_subscriptions": limit},
                retry_after_s=1,
            ),
            generation_id,
        )

    async def _account_gone(self) -> None:
        """From the process's upkeep (realtime.upkeep), within ACCOUNT_RECHECK_INTERVAL_S of the
        user being deactivated or deleted: the token alone would keep the connection working
        until it expires."""
        self.upkeep_key = None
        await self._send_json(
            closing_error(ApiError("unauthorized", "The account is deactivated."))
        )
        await self._close(CLOSE_UNAUTHORIZED)

    async def _send_json(self, payload: dict[str, Any]) -> None:
        if not self.closed:
            await self.send({"type": "websocket.send", "text": dumps(payload)})

    # -- conversations (docs/protocol.md "Conversations") ---------------------------------
    #
    # A conversation subscription is a position in the conversation's turns (their
    # turn_index, the `seq` of `turn` frames). The rows are the log: a live notice (lossy, like
    # every group send) says a turn exists, and the turns after the position are then read
    # from the database, so a lost notice costs only the poll interval, never a turn.

    def _unwatch_conversation(self, conversation_id: str) -> None:
        key = self.conversation_watches.pop(conversation_id, None)
        if key is not None:
            live_hub().unwatch(conversation_group(conversation_id), key)

    async def _on_conversation_notice(self, message: dict[str, Any]) -> None:
        """From the live hub, which must not wait on the database: the reads a notice
        causes run in a task of their own."""
        if message.get("type") not in ("conv.turn", "conv.changed") or self.closed:
            return
        self._spawn(self._conversation_notice(message))

    async def _subscribe_conversation(self, frame: dict[str, Any], ref: Any) -> None:
        assert self.identity is not None
        conversation_id = _id_field(frame, "conversation_id", "A conversation id.")
        after = _position(frame)
        positions = self.conversation_positions
        if conversation_id not in positions and len(positions) >= MAX_CONVERSATION_SUBSCRIPTIONS:
            raise FrameError(
                ApiError(
                    "invalid_request",
                    f"At most {MAX_CONVERSATION_SUBSCRIPTIONS} conversations per connection.",
                    details={"conversation_id": "Unsubscribe from another one first."},
                )
            )
        # Not the user's: the ApiError is the reply.
        await read(conversation_for_user, user=self.identity.user, conversation_id=conversation_id)
        # Join first: a turn created between the read below and the join would be missed by
        # the live path (the poller would still find it, seconds later). Frames are handled
        # one at a time, the disconnect (which leaves every group joined here) included.
        if conversation_id not in self.conversation_watches:
            self.conversation_watches[conversation_id] = await live_hub().watch(
                conversation_group(conversation_id), self._on_conversation_notice
            )
        async with self.conversation_lock:
            positions[conversation_id] = after
            await self._send_json(
                {"type": "conversation_subscribed", "ref": ref, "conversation_id": conversation_id}
            )
            await self._send_turns_after(conversation_id)
        if self.conversation_poller is None:
            self.conversation_poller = self._spawn(self._poll_conversations())

    async def _unsubscribe_conversation(self, frame: dict[str, Any], ref: Any) -> None:
        conversation_id = _id_field(frame, "conversation_id", "A conversation id.")
        await self._drop_conversation(conversation_id)
        await self._send_json(
            {"type": "conversation_unsubscribed", "ref": ref, "conversation_id": conversation_id}
        )

    async def _drop_conversation(self, conversation_id: str) -> None:
        async with self.conversation_lock:
            self.conversation_positions.pop(conversation_id, None)
        self._unwatch_conversation(conversation_id)

    async def _send_turns_after(self, conversation_id: str) -> None:
        """Send every turn above the subscription's position, in order (the lock is held)."""
        positions = self.conversation_positions
        if conversation_id not in positions:
            return
        turns = await read(turns_after, conversation_id, positions[conversation_id])
        for turn in turns:
            if turn.turn_index is None or turn.turn_index <= positions.get(conversation_id, 0):
                continue
            await self._send_json(
                {
                    "type": "turn",
                    "conversation_id": conversation_id,
                    "seq": turn.turn_index,
                    "generation": turn.to_dict(),
                }
            )
            positions[conversation_id] = turn.turn_index

    async def _send_new_turns(self, conversation_id: str) -> None:
        try:
            async with self.conversation_lock:
                await self._send_turns_after(conversation_id)
        except UNAVAILABLE_ERRORS as failure:
            # The poller sends them once the database is back.
            logger.warning("turns of %s deferred: %r", conversation_id, failure)
        except Exception:
            logger.warning("turns of %s failed", conversation_id, exc_info=True)

    async def _poll_conversations(self) -> None:
        """The repair of the lossy live path: look for turns no notice announced."""
        while not self.closed:
            await asyncio.sleep(CONVERSATION_POLL_S)
            for conversation_id in list(self.conversation_positions):
                await self._send_new_turns(conversation_id)

    async def _conversation_notice(self, message: dict[str, Any]) -> None:
        """A followed conversation has a new turn (created in any process), or was renamed,
        switched branch or deleted."""
        conversation_id = message.get("conversation_id")
        positions = self.conversation_positions
        if self.closed or not isinstance(conversation_id, str) or conversation_id not in positions:
            return
        if message["type"] == "conv.turn":
            if int(message.get("seq", 0)) > positions[conversation_id]:
                await self._send_new_turns(conversation_id)
            return
        if message.get("deleted"):
            await self._drop_conversation(conversation_id)
            await self._send_json(
                {"type": "conversation_deleted", "conversation_id": conversation_id}
            )
            return
        try:
            conversation = await read(conversation_state, conversation_id)
        except UNAVAILABLE_ERRORS as failure:
            logger.warning("change of %s not read: %r", conversation_id, failure)
            return
        if conversation is not None:
            await self._send_json(
                {
                    "type": "conversation_updated",
                    "conversation_id": conversation_id,
                    "conversation": conversation,
                }
            )
