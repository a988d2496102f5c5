"""The history of a turn and the deletion of a conversation, in this process on the tier's
real database and event log (SQLite and the in-memory log, or MySQL and Redis): the bounds of
the history (token budget and characters), and deletion removing the replay buffers, which the
black-box tests can see only on the distributed tier."""

from __future__ import annotations

import pytest
from pytest_django.fixtures import Settings as SettingsWrapper

from api.conversations import conversation_delete
from core.models import Conversation, Generation
from jobs import events
from jobs.eventlog import event_log
from jobs.history import count_tokens, history_for
from tests.api.admin_support import user

pytestmark = [pytest.mark.django_db(transaction=True)]


def chain(username: str, *turns: tuple[str, str], model: str = "gpt-4o") -> list[Generation]:
    """A conversation whose turns follow each other: (prompt, output) each, then a new turn."""
    chat = Conversation.objects.create(user=user(username), title="t")
    made: list[Generation] = []
    parent: Generation | None = None
    for index, (prompt, output) in enumerate(turns, start=1):
        parent = Generation.objects.create(
            user=chat.user,
            model=model,
            prompt=prompt,
            output=output,
            max_tokens=16,
            status="completed" if output else "cancelled",
            conversation=chat,
            parent=parent,
            turn_index=index,
        )
        made.append(parent)
    return made


def test_the_history_is_every_ancestor_oldest_first_without_siblings() -> None:
    root, _answer, new = chain("hana", ("q1", "a1"), ("q2", "a2"), ("q3", ""))
    # A sibling of the second turn (a regeneration) is not an ancestor of `new`.
    Generation.objects.create(
        user=root.user,
        model="gpt-4o",
        prompt="q2 again",
        output="other",
        max_tokens=16,
        status="completed",
        conversation=root.conversation,
        parent=root,
        turn_index=4,
    )

    assert history_for(new.pk) == (
        ("user", "q1"),
        ("assistant", "a1"),
        ("user", "q2"),
        ("assistant", "a2"),
    )
    assert history_for(root.pk) == ()


def test_the_character_bound_leaves_out_the_oldest_turns(settings: SettingsWrapper) -> None:
    *_, new = chain("iris", ("old " * 50, "x" * 300), ("recent", "y" * 300), ("now", ""))
    settings.MAX_HISTORY_CHARS = 400

    assert history_for(new.pk) == (("user", "recent"), ("assistant", "y" * 300))


def test_the_token_budget_is_the_models(settings: SettingsWrapper) -> None:
    *_, new = chain("juno", ("first question", "first answer"), ("second", "answer"), ("q", ""))
    # The new prompt and its framing, plus exactly the last turn: the first does not fit.
    last_turn = count_tokens("second") + count_tokens("answer") + 8
    settings.CONTEXT_BUDGETS = {"gpt-4o": count_tokens("q") + 4 + last_turn}

    assert history_for(new.pk) == (("user", "second"), ("assistant", "answer"))
    settings.CONTEXT_BUDGETS = {}
    assert len(history_for(new.pk)) == 4


def test_deleting_a_conversation_removes_its_replay_buffers() -> None:
    first, second = chain("kim", ("q1", "a1"), ("q2", "a2"))
    for generation in (first, second):
        event_log().take_fence(generation.pk, 1)
        event_log().append(
            generation.pk, 1, 1, "delta", events.dumps(events.delta(generation.pk, 1, "a"))
        )
        assert event_log().read_after_sync(generation.pk, 0)[1] is True

    conversation_delete(user=first.user, conversation_id=first.conversation_id or "")

    for generation in (first, second):
        assert event_log().read_after_sync(generation.pk, 0) == ([], False)
        # A worker still holding the attempt can append nothing more.
        assert not event_log().append(
            generation.pk, 1, 2, "delta", events.dumps(events.delta(generation.pk, 2, "b"))
        )
    assert not Generation.objects.filter(pk__in=[first.pk, second.pk]).exists()
    assert not Conversation.objects.filter(pk=first.conversation_id).exists()


def test_only_a_turn_of_an_existing_conversation_is_announced(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A conversation created by its first turn has no followers yet (its id is not out), so
    that turn sends no live notice; the next turn does."""
    from api import conversations, services
    from api.conversations import TurnTarget
    from api.validation import GenerationParams

    announced: list[tuple[str, str]] = []
    monkeypatch.setattr(
        conversations,
        "_notify",
        lambda conversation_id, message: announced.append((conversation_id, message["type"])),
    )
    monkeypatch.setattr(services, "enqueue", lambda generation_id: None)
    params = GenerationParams(
        prompt="hello", model="gpt-4o", system=None, max_tokens=16, temperature=None
    )
    first, _ = services.generation_create(user=user("ines"), params=params, idempotency_key=None)
    assert announced == []
    Generation.objects.filter(pk=first.pk).update(status="completed")
    services.generation_create(
        user=user("ines"),
        params=params,
        idempotency_key=None,
        target=TurnTarget(
            conversation_id=first.conversation_id, parent_id=None, parent_given=False
        ),
    )
    assert announced == [(first.conversation_id, "conv.turn")]
