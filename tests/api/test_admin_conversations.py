"""The admin's conversations, through Django's test client logged in as staff: the list
searchable by username and title, and a conversation's turns drawn with every branch."""

from __future__ import annotations

import re

import pytest
from django.contrib.admin.utils import quote
from django.test import Client

from core.models import Conversation, Generation
from tests.api.admin_support import user

pytestmark = [pytest.mark.django_db(transaction=True)]

CONVERSATIONS = "/admin/api/conversation/"


def conversation(username: str, title: str) -> Conversation:
    return Conversation.objects.create(user=user(username), title=title)


def add_turn(chat: Conversation, prompt: str, parent: Generation | None = None) -> Generation:
    chat.turn_count += 1
    chat.save()
    generation = Generation.objects.create(
        user=chat.user,
        model="gpt-4o-mini",
        prompt=prompt,
        max_tokens=16,
        status="completed",
        output=f"answer to {prompt}",
        conversation=chat,
        parent=parent,
        turn_index=chat.turn_count,
    )
    Conversation.objects.filter(pk=chat.pk).update(current_turn=generation)
    return generation


def listed(client: Client, query: str = "") -> set[str]:
    response = client.get(CONVERSATIONS, {"q": query} if query else {})
    assert response.status_code == 200
    return set(re.findall(r'value="(conv_[0-9A-Za-z]{22})"', response.content.decode()))


def test_conversations_are_searchable_by_user_and_title(admin_client: Client) -> None:
    tides = conversation("alice", "How tides work")
    colours = conversation("alice", "Primary colours")
    bobs = conversation("bob", "Tides for sailors")

    assert listed(admin_client) == {tides.pk, colours.pk, bobs.pk}
    assert listed(admin_client, "alice") == {tides.pk, colours.pk}
    assert listed(admin_client, "tides") == {tides.pk, bobs.pk}
    assert listed(admin_client, bobs.pk) == {bobs.pk}
    assert listed(admin_client, "nothing like this") == set()


def test_the_user_link_lists_exactly_that_users_conversations(admin_client: Client) -> None:
    # "+" is allowed in Django usernames and means a space in a query string.
    plus = conversation("tom+jerry", "Cartoons")
    conversation("tom jerry", "Other cartoons")

    html = admin_client.get(CONVERSATIONS).content.decode()
    link = re.search(r'href="([^"]*)" title="This user\'s conversations">tom\+jerry<', html)

    assert link is not None
    assert link.group(1) == f"{CONVERSATIONS}?q=tom%2Bjerry"
    followed = admin_client.get(link.group(1).replace("&amp;", "&"))
    assert set(re.findall(r'value="(conv_[0-9A-Za-z]{22})"', followed.content.decode())) == {
        plus.pk
    }


def test_a_conversation_page_shows_its_turns_and_branches(admin_client: Client) -> None:
    chat = conversation("alice", "Branches")
    root = add_turn(chat, "root question")
    first_try = add_turn(chat, "first try", parent=root)
    second_try = add_turn(chat, "second try", parent=root)

    # The admin's own quoting: it reads "_26" in a raw id as "&" (ids are random, so about
    # one in fifteen would name no conversation).
    page = admin_client.get(f"{CONVERSATIONS}{quote(chat.pk)}/change/").content.decode()

    turns = re.findall(r'class="turn">\s*<a href="[^"]+">(gen_\w+)</a> ([^:]*):', page)
    assert [turn_id for turn_id, _ in turns] == [root.pk, first_try.pk, second_try.pk]
    assert [label.strip() for _, label in turns] == [
        "completed",
        "branch 1 of 2 · completed",
        "branch 2 of 2 · completed",
    ]
    # The current branch (root, then the second try) is bold; the first try is not.
    bold = re.findall(r'font-weight:bold" class="turn">\s*<a href="[^"]+">(gen_\w+)', page)
    assert bold == [root.pk, second_try.pk]


def test_deleting_in_the_admin_removes_the_turns(admin_client: Client) -> None:
    chat = conversation("alice", "To delete")
    root = add_turn(chat, "root")
    add_turn(chat, "child", parent=root)

    response = admin_client.post(f"{CONVERSATIONS}{quote(chat.pk)}/delete/", {"post": "yes"})

    assert response.status_code == 302
    assert not Conversation.objects.filter(pk=chat.pk).exists()
    assert not Generation.objects.filter(conversation_id=chat.pk).exists()
    assert not Generation.objects.filter(pk=root.pk).exists()


def test_retrying_a_failed_turn_makes_a_branch_beside_it(admin_client: Client) -> None:
    chat = conversation("alice", "Retry")
    root = add_turn(chat, "root")
    failed = add_turn(chat, "failing", parent=root)
    Generation.objects.filter(pk=failed.pk).update(status="failed", output="partial")

    response = admin_client.post(
        "/admin/api/generation/",
        {"action": "retry_failed_generations", "_selected_action": [failed.pk]},
        follow=True,
    )

    assert response.status_code == 200
    retry = Generation.objects.get(retry_of_id=failed.pk)
    assert (retry.conversation_id, retry.parent_id, retry.turn_index) == (chat.pk, root.pk, 3)
    chat.refresh_from_db()
    assert chat.turn_count == 3
    assert chat.current_turn_id == retry.pk
