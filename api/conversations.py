"""Conversations: a user's multi-turn chats, each a tree of turns (docs/protocol.md).

A turn is a generation with a parent (the turn it follows; None for a first turn); the
history it is sent with is built from its ancestors by jobs.history.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db import connection, transaction
from django.db.models import F
from django.utils import timezone

from core.errors import ApiError, not_found
from core.ids import looks_like_conversation_id, looks_like_generation_id
from core.models import ACTIVE_STATUSES, Conversation, Generation, Status
from core.selectors import keyset_page, sql_names
from jobs.eventlog import event_log, generation_now
from jobs.history import check_prompt_fits
from jobs.writer import live_sender

logger = logging.getLogger(__name__)

# A conversation started by a generation is titled with its first prompt, cut to this.
DEFAULT_TITLE_CHARS = 80


@dataclass(frozen=True)
class TurnTarget:
    """Where a request asks its turn to go. `parent_id` absent is different from null (null:
    a new first turn of the conversation, i.e. an edit of its first prompt)."""

    conversation_id: str | None
    parent_id: str | None
    parent_given: bool

    @property
    def given(self) -> bool:
        return self.conversation_id is not None or self.parent_given


NO_TARGET = TurnTarget(conversation_id=None, parent_id=None, parent_given=False)


def parse_turn_target(data: dict[str, Any]) -> TurnTarget:
    """The conversation fields of a generate request whose types GenerationCreateRequest has
    checked; ids that name nothing of this user's are not_found later (place_turn)."""
    return TurnTarget(
        conversation_id=data.get("conversation_id"),
        parent_id=data.get("parent_id"),
        parent_given="parent_id" in data,
    )


# --- Reads ----------------------------------------------------------------------------------


def conversation_for_user(*, user: AbstractBaseUser, conversation_id: str) -> Conversation:
    """The user's conversation; another user's is 'not found', so ids cannot be probed."""
    if not looks_like_conversation_id(conversation_id):
        raise not_found("conversation")
    try:
        return Conversation.objects.get(id=conversation_id, user_id=user.pk)
    except Conversation.DoesNotExist:
        raise not_found("conversation") from None


def _path_to(turn_id: str | None, by_id: dict[str, Generation]) -> list[Generation]:
    """The turns from the root to `turn_id`, oldest first."""
    path: list[Generation] = []
    seen: set[str] = set()
    while turn_id is not None and turn_id in by_id and turn_id not in seen:
        seen.add(turn_id)
        turn = by_id[turn_id]
        path.append(turn)
        turn_id = turn.parent_id
    path.reverse()
    return path


def conversation_view(conversation: Conversation) -> dict[str, Any]:
    """The conversation object with every turn, the current branch and the list of branches."""
    turns = turns_after(conversation.id, 0)
    by_id = {turn.id: turn for turn in turns}
    has_children = {turn.parent_id for turn in turns if turn.parent_id is not None}
    current_path = [turn.id for turn in _path_to(conversation.current_turn_id, by_id)]
    branches = [
        {
            "turn_id": turn.id,
            "turns": len(_path_to(turn.id, by_id)),
            "current": turn.id == conversation.current_turn_id,
        }
        for turn in turns
        if turn.id not in has_children
    ]
    return {
        **conversation.to_dict(),
        "turns": [generation_now(turn) for turn in turns],
        "current_path": current_path,
        "branches": branches,
    }


def conversation_list(
    *, user: AbstractBaseUser, limit: int, cursor: str | None
) -> tuple[list[Conversation], str | None]:
    """The user's conversations, newest first, keyset-paginated on (created_at, id) as the
    generations are."""
    return keyset_page(
        Conversation.objects.filter(user_id=user.pk),
        limit=limit,
        cursor=cursor,
        looks_like_id=looks_like_conversation_id,
    )


def conversation_state(conversation_id: str) -> dict[str, Any] | None:
    """The conversation object without its turns; None once deleted."""
    conversation = Conversation.objects.filter(pk=conversation_id).first()
    return None if conversation is None else conversation.to_dict()


def turns_after(conversation_id: str, after: int) -> list[Generation]:
    """The conversation's turns numbered above `after` (the seq of `turn` events; 0: all)."""
    return list(
        Generation.objects.filter(conversation_id=conversation_id, turn_index__gt=after).order_by(
            "turn_index"
        )[: settings.MAX_CONVERSATION_TURNS]
    )


# --- Writes ---------------------------------------------------------------------------------


def default_title(prompt: str) -> str:
    line = " ".join(prompt.split())
    if len(line) <= DEFAULT_TITLE_CHARS:
        return line
    return line[: DEFAULT_TITLE_CHARS - 1].rstrip() + "…"


def _check_system_length(system: str | None) -> None:
    """A conversation's system prompt (sanitised by the request model) within
    MAX_SYSTEM_CHARS: over it is prompt_too_long, as for a generation's."""
    if system is not None and len(system) > settings.MAX_SYSTEM_CHARS:
        raise ApiError(
            "prompt_too_long",
            "The system prompt is too long.",
            details={"system": f"At most {settings.MAX_SYSTEM_CHARS} characters."},
        )


def conversation_create(
    *, user: AbstractBaseUser, title: str = "", system: str | None = None
) -> Conversation:
    _check_system_length(system)
    return Conversation.objects.create(user_id=user.pk, title=title, system=system)


@dataclass(frozen=True)
class Placement:
    """Where a new turn goes, decided inside generation_create's transaction."""

    conversation: Conversation
    parent_id: str | None
    turn_index: int
    system: str | None
    # Created for this turn: nobody can follow it yet (its id is not out), so its first turn
    # is announced to no one.
    new_conversation: bool = False


def place_turn(
    *,
    user: AbstractBaseUser,
    target: TurnTarget,
    model: str,
    prompt: str,
    system: str | None,
) -> Placement:
    """Resolve the conversation and parent of a new turn and reserve its index.

    Runs under the user's row lock (generation_create), which serialises this user's creates,
    so two turns never get one index and a parent's status cannot change under the check."""
    parent: Generation | None = None
    conversation: Conversation | None = None
    if target.parent_id is not None:
        if not looks_like_generation_id(target.parent_id):
            raise not_found("parent turn")
        parent = Generation.objects.filter(id=target.parent_id, user_id=user.pk).first()
        if parent is None or parent.conversation_id is None:
            raise not_found("parent turn")
        if target.conversation_id is not None and target.conversation_id != parent.conversation_id:
            raise ApiError(
                "invalid_request",
                "The parent turn is not in this conversation.",
                details={"parent_id": "Not a turn of conversation_id."},
            )
        conversation = Conversation.objects.get(pk=parent.conversation_id)
    elif target.conversation_id is not None:
        conversation = conversation_for_user(user=user, conversation_id=target.conversation_id)
        if not target.parent_given and conversation.current_turn_id is not None:
            parent = Generation.objects.get(pk=conversation.current_turn_id)

    if conversation is None:
        check_prompt_fits(model=model, system=system, prompt=prompt)
        conversation = Conversation.objects.create(
            user_id=user.pk, title=default_title(prompt), system=system, turn_count=1
        )
        return Placement(conversation, None, 1, system, new_conversation=True)

    if system is not None and system != conversation.system:
        raise ApiError(
            "invalid_request",
            "The system prompt belongs to the conversation.",
            details={
                "system": "Omit it (or send the conversation's own); change it with "
                "PATCH /api/v1/conversations/{id}."
            },
        )
    if parent is not None and parent.status in ACTIVE_STATUSES:
        raise ApiError(
            "parent_not_finished",
            f"The turn this one follows ({parent.id}) is still {parent.status}; send the next "
            "prompt once it has finished, or cancel it.",
            details={"parent_id": parent.id, "status": parent.status},
        )
    # Counted before the prompt is checked: a refusal rolls the count back with
    # generation_create's transaction.
    turn_index = _next_turn_index(
        conversation,
        f"A conversation holds at most {settings.MAX_CONVERSATION_TURNS} turns; start a new one.",
    )
    check_prompt_fits(model=model, system=conversation.system, prompt=prompt)
    if not conversation.title:
        Conversation.objects.filter(pk=conversation.pk).update(title=default_title(prompt))
    return Placement(
        conversation, parent.id if parent is not None else None, turn_index, conversation.system
    )


def place_retry(original: Generation) -> int | None:
    """The turn index of an operator's retry of `original` (a branch beside it, with the same
    parent), or None when `original` is in no conversation. Under the user's row lock."""
    if original.conversation_id is None:
        return None
    return _next_turn_index(
        Conversation.objects.get(pk=original.conversation_id),
        f"Its conversation holds {settings.MAX_CONVERSATION_TURNS} turns already.",
    )


def _next_turn_index(conversation: Conversation, full_message: str) -> int:
    """Count a new turn of `conversation` and return its index; conversation_full at
    MAX_CONVERSATION_TURNS."""
    if conversation.turn_count >= settings.MAX_CONVERSATION_TURNS:
        raise ApiError(
            "conversation_full", full_message, details={"conversation_id": conversation.id}
        )
    # The user's row lock serialises this; the F() keeps the count right regardless.
    Conversation.objects.filter(pk=conversation.pk).update(turn_count=F("turn_count") + 1)
    conversation.refresh_from_db()
    return conversation.turn_count


def turn_created(
    *, conversation_id: str, generation_id: str, turn_index: int, announce: bool = True
) -> None:
    """The new turn becomes the conversation's current one, and its WebSocket subscribers hear
    of it once the transaction commits (`announce`). Lossy like any live send: a subscriber
    that misses it finds the turn on its next poll of the rows."""
    # In SQL: it is on every create's way to its 202 (docs/scaling.md, "Per-stream reads in
    # SQL"), and the ORM's building of an UPDATE cost several times its round trip.
    conversations = sql_names(Conversation)
    column = conversations.column
    with connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE {conversations.table}"
            f" SET {column['current_turn_id']} = %s, {column['updated_at']} = %s"
            f" WHERE {column['id']} = %s",
            [
                generation_id,
                connection.ops.adapt_datetimefield_value(timezone.now()),
                conversation_id,
            ],
        )
    if announce:
        notice = {"type": "conv.turn", "seq": turn_index}
        transaction.on_commit(lambda: _notify(conversation_id, notice))


def conversation_group(conversation_id: str) -> str:
    return f"conv.{conversation_id}"


def notify_changed(conversation_id: str, *, deleted: bool = False) -> None:
    """Tell the conversation's WebSocket subscribers that it was renamed, switched to another
    branch or deleted (after the commit). Best effort, like any live send: a client that
    missed it reads the conversation when it reconnects."""
    _notify(conversation_id, {"type": "conv.changed", "deleted": deleted})


def _notify(conversation_id: str, message: dict[str, Any]) -> None:
    try:
        live_sender().send(
            conversation_group(conversation_id), {**message, "conversation_id": conversation_id}
        )
    except Exception:
        logger.warning("%s notice for %s not sent", message["type"], conversation_id, exc_info=True)


def _newest_leaf_under(turn_id: str, conversation_id: str) -> str:
    """The branch through `turn_id`: follow its newest child down to a leaf."""
    children: dict[str | None, list[tuple[int, str]]] = {}
    for turn, parent, index in Generation.objects.filter(
        conversation_id=conversation_id
    ).values_list("id", "parent_id", "turn_index")[: settings.MAX_CONVERSATION_TURNS]:
        children.setdefault(parent, []).append((index or 0, turn))
    current = turn_id
    for _ in range(settings.MAX_CONVERSATION_TURNS):
        below = children.get(current)
        if not below:
            break
        current = max(below)[1]
    return current


def conversation_update(
    *, user: AbstractBaseUser, conversation_id: str, changes: dict[str, Any]
) -> Conversation:
    """Rename, change the system prompt (for turns created from now on), or switch branch:
    `current_turn_id` names any turn of the conversation, and the current branch becomes the
    one through it (down its newest children to a leaf). `changes` holds the fields of
    ConversationUpdateRequest that the request set, checked and sanitised."""
    with transaction.atomic():
        conversation = conversation_for_user(user=user, conversation_id=conversation_id)
        _check_system_length(changes.get("system"))
        if "current_turn_id" in changes:
            turn_id = changes["current_turn_id"]
            if (
                not looks_like_generation_id(turn_id)
                or not Generation.objects.filter(
                    id=turn_id, conversation_id=conversation.id, user_id=user.pk
                ).exists()
            ):
                raise not_found("turn in this conversation")
            changes = {**changes, "current_turn_id": _newest_leaf_under(turn_id, conversation.id)}
        for name, value in changes.items():
            setattr(conversation, name, value)
        conversation.save()
        changed_id = conversation.id
        transaction.on_commit(lambda: notify_changed(changed_id))
    return conversation


def conversation_delete(*, user: AbstractBaseUser, conversation_id: str) -> None:
    conversation_remove(conversation_for_user(user=user, conversation_id=conversation_id))


def conversation_remove(conversation: Conversation) -> None:
    """Delete a conversation, its generations and their replay buffers (a user's request, or
    an operator's in the admin): what a user asking for their data to be removed expects. A
    running turn is cancelled first, so that its worker stops reading (and paying for) the
    provider's stream; its next write finds no row and it stops (jobs.engine: LostOwnership)."""
    with transaction.atomic():
        ids = list(
            Generation.objects.filter(conversation_id=conversation.pk).values_list("id", "status")
        )
        Conversation.objects.filter(pk=conversation.pk).update(current_turn=None)
        # Unlink the tree first: InnoDB checks a self-referencing foreign key row by row
        # within one DELETE, so a parent deleted before its child would be refused.
        turns = Generation.objects.filter(conversation_id=conversation.pk)
        turns.update(parent=None)
        turns.delete()
        deleted_id = conversation.id
        conversation.delete()
        transaction.on_commit(lambda: notify_changed(deleted_id, deleted=True))
    for generation_id, status in ids:
        try:
            if status == Status.RUNNING:
                event_log().request_cancel(generation_id)
            event_log().discard(generation_id)
        except Exception:
            # Redis is down: the buffers expire on their own (REPLAY_TTL_*), and no row is
            # left that could serve them.
            logger.warning("replay buffer of %s not discarded", generation_id, exc_info=True)
