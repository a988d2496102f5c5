"""core.mysql: Django's MySQL backend with fewer round trips, on the real server.

A transaction costs START TRANSACTION and COMMIT, with no SET autocommit around them; a kept
connection's health check is its request's first statement where that statement may be sent
twice, and the ping before it where not. A connection the server dropped between requests
costs the request nothing either way. The pings are counted by wrapping the backend's real
`is_usable`; the statements by the server's own session counters.
"""

from __future__ import annotations

from collections.abc import Iterator

import MySQLdb
import pytest
from django.contrib.auth import get_user_model
from django.db import (
    DEFAULT_DB_ALIAS,
    OperationalError,
    connection,
    connections,
    transaction,
)

from core.models import Generation, Status
from tests.api.test_request_threads import kill
from tests.tier_env import TIER

pytestmark = [
    pytest.mark.skipif(TIER != "distributed", reason="the MySQL backend"),
    pytest.mark.django_db(transaction=True),
]


def _server() -> MySQLdb.Connection:
    """A connection of the test's own, to the test database."""
    return MySQLdb.connect(
        host="127.0.0.1", user="root", passwd="", port=3306, db=connection.settings_dict["NAME"]
    )


def _session_id() -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT CONNECTION_ID()")
        return int(cursor.fetchone()[0])


def _counter(name: str) -> int:
    """One of this session's status counters (the SHOW itself counts in none of them)."""
    with connection.cursor() as cursor:
        cursor.execute("SHOW SESSION STATUS LIKE %s", [name])
        return int(cursor.fetchone()[1])


@pytest.fixture
def pings(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """A kept connection as a request thread has it (project.handler), and the health-check
    pings sent on it."""
    sent: list[int] = []
    # The wrapper itself: `connection` is a proxy, whose own attributes monkeypatch would
    # delete afterwards rather than restore.
    wrapper = connections[DEFAULT_DB_ALIAS]
    real = wrapper.is_usable

    def counted() -> bool:
        sent.append(1)
        return real()

    wrapper.ensure_connection()
    monkeypatch.setattr(wrapper, "is_usable", counted)
    monkeypatch.setattr(wrapper, "health_check_enabled", True)
    monkeypatch.setattr(wrapper, "close_at", None)
    yield sent


def _next_request() -> None:
    """What Django does as a request starts (the request_started signal)."""
    connection.close_if_unusable_or_obsolete()


def _generation() -> Generation:
    user, _ = get_user_model().objects.get_or_create(username="backend")
    return Generation.objects.create(
        user=user, model="gpt-4o-mini", prompt="p", max_tokens=4, status=Status.QUEUED
    )


def test_a_transaction_is_start_transaction_and_commit_with_autocommit_left_on() -> None:
    generation = _generation()
    set_options, begins, commits = (
        _counter("Com_set_option"),
        _counter("Com_begin"),
        _counter("Com_commit"),
    )
    with transaction.atomic():
        Generation.objects.filter(pk=generation.pk).update(seq=1)
        # The session's autocommit mode stays on: the transaction is START TRANSACTION's.
        assert connection.connection.get_autocommit()
        assert not connection.get_autocommit()
    with transaction.atomic():
        Generation.objects.filter(pk=generation.pk).update(seq=2)
    assert _counter("Com_set_option") == set_options  # no SET autocommit, either way
    assert _counter("Com_begin") == begins + 2
    assert _counter("Com_commit") == commits + 2
    assert connection.connection.get_autocommit()
    generation.refresh_from_db()
    assert generation.seq == 2


def test_a_rolled_back_transaction_leaves_nothing_and_the_session_in_autocommit() -> None:
    generation = _generation()
    with pytest.raises(RuntimeError), transaction.atomic():
        Generation.objects.filter(pk=generation.pk).update(seq=7)
        raise RuntimeError("refused")
    assert connection.connection.get_autocommit()
    # Outside a transaction, a write is committed at once: no transaction was left open.
    Generation.objects.filter(pk=generation.pk).update(seq=3)
    server = _server()
    try:
        cursor = server.cursor()
        cursor.execute(
            f"SELECT seq FROM {Generation._meta.db_table} WHERE id = %s", [generation.pk]
        )
        assert cursor.fetchone()[0] == 3
    finally:
        server.close()


def test_a_first_select_is_the_health_check(pings: list[int]) -> None:
    _next_request()
    before = _session_id()
    assert _session_id() == before
    assert pings == []


def test_a_first_select_on_a_dropped_connection_is_sent_again_on_a_new_one(
    pings: list[int],
) -> None:
    dropped = _session_id()
    kill({dropped})
    _next_request()
    assert _session_id() != dropped
    assert pings == []


def test_a_first_transaction_on_a_dropped_connection_begins_on_a_new_one(
    pings: list[int],
) -> None:
    generation = _generation()
    dropped = _session_id()
    kill({dropped})
    _next_request()
    with transaction.atomic():
        Generation.objects.filter(pk=generation.pk).update(seq=5)
        assert _session_id() != dropped
    assert pings == []
    generation.refresh_from_db()
    assert generation.seq == 5


def test_a_first_write_outside_a_transaction_is_pinged_first(pings: list[int]) -> None:
    """A write on its own commits as it runs: sent twice it could be done twice, so the
    connection is checked before it, as Django does."""
    generation = _generation()
    dropped = _session_id()
    kill({dropped})
    _next_request()
    assert Generation.objects.filter(pk=generation.pk).update(seq=4) == 1
    assert pings == [1]
    assert _session_id() != dropped
    # Only the first statement of a request is checked.
    Generation.objects.filter(pk=generation.pk).update(seq=6)
    assert pings == [1]


def test_a_statement_inside_a_transaction_is_never_sent_again(pings: list[int]) -> None:
    generation = _generation()
    _next_request()
    with pytest.raises(OperationalError), transaction.atomic():
        session = _session_id()  # the first statement: the transaction has begun
        kill({session})
        Generation.objects.filter(pk=generation.pk).update(seq=9)
    generation.refresh_from_db()
    assert generation.seq == 0
    assert pings == []


def test_a_first_select_that_fails_for_itself_is_not_sent_again(pings: list[int]) -> None:
    _next_request()
    session = _session_id()
    _next_request()
    # An OperationalError of its own (1054), not a lost connection's.
    with pytest.raises(OperationalError, match="1054"), connection.cursor() as cursor:
        cursor.execute("SELECT no_such_column FROM auth_user")
    assert _session_id() == session
    assert pings == []
