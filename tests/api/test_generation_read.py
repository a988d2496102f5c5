"""The user's generation as the REST reads load it (core.selectors.generation_for_user, in SQL of
its own): the same model the ORM loads, every field and type, in one statement; another
user's, an unknown or a malformed id is 'not found'. On the tier's real database.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.db.models import Model

from core.errors import ApiError
from core.models import Conversation, Generation, Status
from core.selectors import generation_for_user

pytestmark = [pytest.mark.django_db(transaction=True)]


def fields(instance: Model) -> dict[str, Any]:
    return {f.attname: getattr(instance, f.attname) for f in type(instance)._meta.concrete_fields}


def test_it_loads_what_the_orm_loads_in_one_statement(django_assert_num_queries: Any) -> None:
    owner = get_user_model().objects.create(username="read-owner")
    conversation = Conversation.objects.create(user=owner, title="t")
    first = Generation.objects.create(
        user=owner, model="m", prompt="p", max_tokens=8, conversation=conversation, turn_index=0
    )
    generation = Generation.objects.create(
        user=owner,
        model="gpt-4o-mini",
        prompt="what is 2 + 2? ünïcödé 🙂",
        system="be brief",
        max_tokens=64,
        temperature=0.5,
        status=Status.FAILED,
        output="four 🙂",
        reasoning="add them",
        seq=7,
        attempt=2,
        finish_reason="error",
        usage={"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7},
        error={"code": "provider_error", "message": "went away"},
        started_at=datetime(2026, 12, 5, 10, 0, 1, 250_000, tzinfo=UTC),
        finished_at=datetime(2026, 12, 5, 10, 0, 3, tzinfo=UTC),
        conversation=conversation,
        parent=first,
        turn_index=1,
        cancel_requested=True,
        token_cap=64,
    )

    with django_assert_num_queries(1):
        read = generation_for_user(user=owner, generation_id=generation.id)

    assert fields(read) == fields(Generation.objects.get(pk=generation.id))
    assert read.to_dict() == Generation.objects.get(pk=generation.id).to_dict()
    assert read.created_at.tzinfo is not None and read.started_at is not None
    assert read.started_at.tzinfo is not None
    assert read.usage == {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}
    assert read.cancel_requested is True


@pytest.mark.parametrize("whose", ["another user's", "unknown", "malformed"])
def test_anything_but_the_users_own_generation_is_not_found(whose: str) -> None:
    owner = get_user_model().objects.create(username="read-owner-2")
    other = get_user_model().objects.create(username="read-other")
    generation = Generation.objects.create(user=owner, model="m", prompt="p", max_tokens=8)
    ask = {
        "another user's": (other, generation.id),
        "unknown": (
            owner,
            generation.id[:-4] + ("0000" if generation.id[-4:] != "0000" else "1111"),
        ),
        "malformed": (owner, "'; DROP TABLE core_generation; --"),
    }[whose]

    with pytest.raises(ApiError) as raised:
        generation_for_user(user=ask[0], generation_id=ask[1])

    assert raised.value.code == "not_found"
