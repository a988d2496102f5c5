"""Helpers for the admin's tests (tests/api/test_admin.py, tests/jobs/test_admin_actions.py)."""

from __future__ import annotations

import re
from typing import Any

from django.contrib.auth import get_user_model
from django.test import Client

from core.models import TERMINAL_STATUSES, Generation
from jobs.writer import settle_usage

CHANGELIST = "/admin/api/generation/"


def user(username: str) -> Any:
    return get_user_model().objects.get_or_create(username=username)[0]


def row(username: str = "alice", prompt: str = "hello", **fields: Any) -> Generation:
    """A generation's row as the service leaves it; a finished one's tokens are settled into
    its user's usage of its creation day, as the final write does (jobs.writer)."""
    created_at = fields.pop("created_at", None)
    generation = Generation.objects.create(
        user=user(username),
        model=fields.pop("model", "gpt-4o-mini"),
        prompt=prompt,
        max_tokens=fields.pop("max_tokens", 64),
        **fields,
    )
    if created_at is not None:  # auto_now_add: set after the insert
        Generation.objects.filter(pk=generation.pk).update(created_at=created_at)
        generation.created_at = created_at
    if generation.status in TERMINAL_STATUSES:
        settle_usage(generation.pk)
    return generation


def ids_on_page(html: str) -> set[str]:
    """The generation ids the list shows (each row's checkbox carries one)."""
    return set(re.findall(r'name="_selected_action" value="(gen_[0-9A-Za-z]{22})"', html))


def action(client: Client, name: str, *generation_ids: str) -> Any:
    return client.post(
        CHANGELIST,
        {"action": name, "_selected_action": list(generation_ids)},
        follow=True,
    )
