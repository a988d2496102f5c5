"""The operators' admin, through Django's test client logged in as staff: the generation list
(filters, search, no full-table count, no query per row), the read-only change page, the
actions on rows no worker holds, the per-user limits, and who may use it. The actions with the
real runner are in tests/jobs/test_admin_actions.py."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import timedelta
from typing import Any
from urllib.parse import urlencode

import pytest
from django.contrib.admin.utils import quote
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from api import admin as generation_admin
from core.models import Generation, UserLimits
from tests.api.admin_support import CHANGELIST, action, ids_on_page, row, user
from tests.harness import make_token
from tests.jobs.support import logged_events

pytestmark = [pytest.mark.django_db(transaction=True)]

# --- The list ------------------------------------------------------------------------------


def test_changelist_filters_by_status_model_user_and_date(admin_client: Client) -> None:
    done = row("alice", status="completed", model="gpt-4o")
    failed = row("alice", status="failed")
    queued = row("bob")
    old = row("bob", status="cancelled")
    Generation.objects.filter(pk=old.pk).update(created_at=timezone.now() - timedelta(days=40))

    def listed(query: str) -> set[str]:
        response = admin_client.get(f"{CHANGELIST}?{query}")
        assert response.status_code == 200
        return ids_on_page(response.content.decode())

    assert listed("") == {done.pk, failed.pk, queued.pk, old.pk}
    assert listed("status=failed") == {failed.pk}
    assert listed("status=queued") == {queued.pk}
    assert listed("model=gpt-4o") == {done.pk}
    assert listed("user=alice") == {done.pk, failed.pk}
    assert listed("user=bob&status=cancelled") == {old.pk}
    assert listed("user=nobody") == set()
    # What the date filter's "Past 7 days" link asks for.
    today = timezone.now().replace(hour=0, minute=0, second=0, microsecond=0)
    past_week = {
        "created_at__gte": str(today - timedelta(days=7)),
        "created_at__lt": str(today + timedelta(days=1)),
    }
    assert listed(urlencode(past_week)) == {
        done.pk,
        failed.pk,
        queued.pk,
    }


def test_changelist_search_finds_by_id_by_username_and_by_prompt(admin_client: Client) -> None:
    first = row("alice", prompt="why is the sky blue")
    second = row("alice", prompt="tell me about otters")
    third = row("carol", prompt="otters again")

    def found(term: str) -> set[str]:
        response = admin_client.get(CHANGELIST, {"q": term})
        assert response.status_code == 200
        return ids_on_page(response.content.decode())

    assert found(first.pk) == {first.pk}
    assert found("alice") == {first.pk, second.pk}
    assert found("otters") == {second.pk, third.pk}
    assert found("SKY BLUE") == {first.pk}
    assert found("nothing like this") == set()


def test_changelist_costs_the_same_queries_for_5_or_60_rows_and_counts_no_whole_table(
    admin_client: Client,
) -> None:
    for index in range(5):
        row(f"user{index}")
    with CaptureQueriesContext(connection) as few:
        assert admin_client.get(CHANGELIST).status_code == 200
    for index in range(55):
        row(f"user{index % 20}")
    with CaptureQueriesContext(connection) as many:
        response = admin_client.get(CHANGELIST)
    assert response.status_code == 200
    # 50 rows shown of 60, with each row's user: no query per row.
    assert (
        len(ids_on_page(response.content.decode()))
        == generation_admin.GenerationAdmin.list_per_page
    )
    assert len(many.captured_queries) == len(few.captured_queries)
    counts = [q["sql"] for q in many.captured_queries if "COUNT(" in q["sql"].upper()]
    assert counts, "the list should count its (capped) rows"
    for sql in counts:
        # Only ever a bounded count: COUNT(*) over a LIMITed subquery.
        assert "api_generation" not in sql or "LIMIT" in sql.upper(), sql


def test_the_count_stops_at_the_cap(admin_client: Client, monkeypatch: Any) -> None:
    monkeypatch.setattr(generation_admin, "COUNT_CAP_ROWS", 3)
    for _ in range(5):
        row("alice")

    response = admin_client.get(f"{CHANGELIST}?status=queued")

    assert response.status_code == 200
    assert response.context["cl"].result_count == 3


# --- The change page ---------------------------------------------------------------------------


def test_change_view_of_a_generation_with_no_buffered_log_says_so(admin_client: Client) -> None:
    generation = row("alice", status="completed", output="old text", seq=12)

    response = admin_client.get(reverse("admin:api_generation_change", args=[quote(generation.pk)]))

    assert response.status_code == 200
    assert "no longer buffered" in response.content.decode()


def test_generations_cannot_be_added_in_the_admin(admin_client: Client) -> None:
    assert admin_client.get(f"{CHANGELIST}add/").status_code == 403


# --- Actions -----------------------------------------------------------------------------------


def test_cancel_action_cancels_a_queued_generation_and_leaves_ended_ones(
    admin_client: Client,
) -> None:
    queued = row("alice")
    completed = row("alice", status="completed", output="kept", seq=3)

    response = action(admin_client, "cancel_generations", queued.pk, completed.pk)

    assert response.status_code == 200
    queued.refresh_from_db()
    completed.refresh_from_db()
    assert (queued.status, queued.finish_reason) == ("cancelled", "cancelled")
    # Subscribers are told: `done` cancelled is the log's last event.
    assert logged_events(queued.pk)[-1]["type"] == "done"
    assert logged_events(queued.pk)[-1]["status"] == "cancelled"
    assert (completed.status, completed.output) == ("completed", "kept")
    text = response.content.decode()
    assert "Cancelled 1." in text
    assert "Left 1 alone" in text


def test_retry_action_respects_the_users_active_limit(admin_client: Client) -> None:
    failed = row("alice", status="failed", finish_reason="error")
    row("alice")  # queued: the one generation alice may have active
    UserLimits.objects.create(user=user("alice"), max_active_generations=1)

    response = action(admin_client, "retry_failed_generations", failed.pk)

    assert "too_many_active" in response.content.decode()
    assert not Generation.objects.filter(retry_of=failed).exists()


# --- Per-user limits and usage -----------------------------------------------------------------


def _create_over_rest(client: Client, username: str) -> Any:
    return client.post(
        "/api/v1/generations",
        {"prompt": "hello"},
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {make_token(username)}",
    )


def test_user_limits_saved_in_the_admin_apply_to_the_next_create(admin_client: Client) -> None:
    dave = user("dave")
    api = Client()
    assert _create_over_rest(api, "dave").status_code == 202

    response = admin_client.post(
        "/admin/api/userlimits/add/",
        {
            "user": dave.pk,
            "rate_limit_per_minute": "",
            "tokens_per_day": "",
            "max_active_generations": "1",
            "max_connections": "",
        },
    )

    assert response.status_code == 302, response.content.decode()[:2000]
    refused = _create_over_rest(api, "dave")
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "too_many_active"
    assert refused["Retry-After"]


def test_user_limits_list_shows_todays_tokens_and_active_count_in_one_query(
    admin_client: Client,
) -> None:
    for name, tokens in (("erin", 120), ("frank", 7)):
        UserLimits.objects.create(user=user(name), tokens_per_day=1000)
        row(name, status="completed", completion_tokens=tokens)
        row(name, status="completed", completion_tokens=tokens)
        row(name)  # active
        row(
            name,
            status="completed",
            completion_tokens=5000,
            created_at=timezone.now() - timedelta(days=2),
        )

    with CaptureQueriesContext(connection) as queries:
        response = admin_client.get("/admin/api/userlimits/")

    assert response.status_code == 200
    html = response.content.decode()
    cells = re.findall(r'<td class="field-(tokens_today|active_now)">(\d+)</td>', html)
    assert sorted(cells) == sorted(
        [("tokens_today", "240"), ("active_now", "1"), ("tokens_today", "14"), ("active_now", "1")]
    )
    selects = [q for q in queries.captured_queries if "api_userlimits" in q["sql"]]
    # One for the rows (with usage as subqueries), one for the capped count.
    assert len(selects) <= 2, [q["sql"] for q in selects]


def test_user_change_page_shows_usage_and_the_limits_inline(admin_client: Client) -> None:
    grace = user("grace")
    UserLimits.objects.create(user=grace, tokens_per_day=500)
    row("grace", status="completed", completion_tokens=42)

    response = admin_client.get(reverse("admin:auth_user_change", args=[grace.pk]))

    assert response.status_code == 200
    html = response.content.decode()
    assert "completion tokens today: 42 of 500 (override)" in html
    assert 'name="limits-0-tokens_per_day"' in html


# --- Who may use it ----------------------------------------------------------------------------


@pytest.fixture
def non_staff_client(client: Client) -> Iterator[Client]:
    client.force_login(user("mallory"))
    yield client


def test_non_staff_users_are_refused(non_staff_client: Client) -> None:
    queued = row("alice")

    listing = non_staff_client.get(CHANGELIST)
    posted = action(non_staff_client, "cancel_generations", queued.pk)
    limits = non_staff_client.get("/admin/api/userlimits/")

    assert listing.status_code == 302
    assert "/admin/login/" in listing["Location"]
    assert limits.status_code == 302
    assert posted.redirect_chain and "/admin/login/" in posted.redirect_chain[-1][0]
    queued.refresh_from_db()
    assert queued.status == "queued"


# --- Security (issue 14) -------------------------------------------------------------------


def test_admin_refuses_a_weak_password(admin_client: Client) -> None:
    from django.contrib.auth import get_user_model

    def add(password: str) -> Any:
        return admin_client.post(
            "/admin/auth/user/add/",
            {
                "username": f"newbie{len(password)}",
                "usable_password": "true",
                "password1": password,
                "password2": password,
                # The per-user limits inline, left empty.
                "limits-TOTAL_FORMS": "0",
                "limits-INITIAL_FORMS": "0",
            },
        )

    weak = add("a")
    strong = add("a long enough passphrase 42")

    assert weak.status_code == 200  # the form again, with the validators' messages
    assert "This password is too short" in weak.content.decode()
    assert not get_user_model().objects.filter(username="newbie1").exists()
    assert strong.status_code == 302
    assert get_user_model().objects.filter(username=f"newbie{len('a long enough passphrase 42')}")


def test_user_links_url_encode_the_username(admin_client: Client) -> None:
    # "+" is allowed in Django usernames and means a space in a query string.
    plus = row("tom+jerry")
    row("tom jerry")

    html = admin_client.get(CHANGELIST).content.decode()
    filtered = admin_client.get(f"{CHANGELIST}?user=tom%2Bjerry")

    assert "?user=tom%2Bjerry" in html
    assert ids_on_page(filtered.content.decode()) == {plus.pk}


def test_a_link_to_a_generation_whose_id_holds_an_admin_escape_opens_it(
    admin_client: Client,
) -> None:
    # The admin reads "_2F" in a URL's object id as "/": an id that starts "gen_2F" (one random
    # id in about 200 starts with such a pair) must be quoted in every link to it.
    failed = row("alice", status="failed", finish_reason="error")
    retry = row("alice", id="gen_2F" + "a" * 20, retry_of=failed)

    page = admin_client.get(reverse("admin:api_generation_change", args=[quote(failed.pk)]))

    links = re.findall(r'<a href="([^"]+)">' + retry.pk + "</a>", page.content.decode())
    assert len(links) == 1, page.content.decode()[:2000]
    opened = admin_client.get(links[0])
    assert opened.status_code == 200
    assert retry.pk in opened.content.decode()
