"""Reads of generations, for views, consumers and the realtime layer."""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser
from django.db import connection
from django.db.models import Model, Q, QuerySet

from core.errors import ApiError, not_found
from core.ids import looks_like_generation_id
from core.models import (
    ACTIVE_STATUSES,
    TERMINAL_STATUSES,
    Generation,
    SettledUsage,
    Status,
    UserLimits,
)


@dataclass(frozen=True)
class RowState:
    """What a subscriber needs of the row: the persisted fold and, once ended, `done`."""

    id: str
    user_id: int
    status: str
    seq: int
    output: str
    finish_reason: str | None
    usage: dict[str, int] | None
    error: dict[str, str] | None
    # PROTOCOL §8: the reasoning through `seq`, carried in snapshots beside `output`.
    reasoning: str = ""

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES


def generation_for_user(*, user: AbstractBaseUser, generation_id: str) -> Generation:
    """The user's generation; another user's is 'not found', so ids cannot be probed.

    Our own statement, through `raw`, which loads the model as the ORM does (every field,
    through the database's converters): a REST read of a generation is on every stream's way,
    and the ORM's building of the query cost as much as the rest of the read (0.41 against
    0.20 ms of CPU per read on MariaDB, docs/scaling.md)."""
    if not looks_like_generation_id(generation_id):
        raise not_found()
    for generation in Generation.objects.raw(
        _generation_for_user_sql(connection.vendor), [generation_id, user.pk]
    ):
        return generation
    raise not_found()


@cache
def _generation_for_user_sql(vendor: str) -> str:
    names = sql_names(Generation)
    columns = ", ".join(names.column[field.attname] for field in Generation._meta.concrete_fields)
    return (
        f"SELECT {columns} FROM {names.table}"
        f" WHERE {names.column['id']} = %s AND {names.column['user_id']} = %s"
    )


@dataclass(frozen=True)
class SqlNames:
    """A model's table and columns, quoted for the connection, for the statements written in
    SQL rather than through the ORM (docs/scaling.md, "Per-stream reads in SQL")."""

    table: str
    column: dict[str, str]  # by the field's attname: `user_id`, not `user`


def sql_names(model: type[Model]) -> SqlNames:
    return _sql_names(model, connection.vendor)


@cache  # built once per model: these statements are on every stream's way
def _sql_names(model: type[Model], vendor: str) -> SqlNames:
    quote = connection.ops.quote_name
    return SqlNames(
        quote(model._meta.db_table),
        {f.attname: quote(f.column) for f in model._meta.concrete_fields},
    )


# The row's columns a subscriber reads, in RowState's order (after its id).
_ROW_FIELDS = ("user_id", "status", "seq", "output", "finish_reason", "usage", "error", "reasoning")


def _json(value: Any) -> Any:
    """A JSON column's value as the ORM gives it: decoded, or None."""
    return None if value is None else json.loads(value)


def row_state(generation_id: str) -> RowState | None:
    """None for an id of the wrong shape too (it is not queried).

    In SQL: every subscribe and resume reads it, and through the ORM the statement's building
    cost several times its round trip (docs/scaling.md, "Per-stream reads in SQL")."""
    if not looks_like_generation_id(generation_id):
        return None
    generations = sql_names(Generation)
    columns = ", ".join(generations.column[name] for name in _ROW_FIELDS)
    rows = _rows(f"SELECT {columns} FROM {generations.table} WHERE id = %s", [generation_id])
    if not rows:
        return None
    user_id, status, seq, output, finish_reason, usage, error, reasoning = rows[0]
    return RowState(
        generation_id,
        int(user_id),
        status,
        int(seq),
        output,
        finish_reason,
        _json(usage),
        _json(error),
        reasoning,
    )


def row_state_of(generation: Generation) -> RowState:
    """What a subscriber needs of a row the caller has just read or written."""
    return RowState(
        generation.id,
        int(generation.user_id),
        generation.status,
        generation.seq,
        generation.output,
        generation.finish_reason,
        generation.usage,
        generation.error,
        generation.reasoning,
    )


def generation_status(generation_id: str) -> str | None:
    """The generation's status alone, in SQL: what a cancel reads while it waits for the
    worker to stop (None if the row is gone)."""
    generations = sql_names(Generation)
    rows = _rows(
        f"SELECT {generations.column['status']} FROM {generations.table}"
        f" WHERE {generations.column['id']} = %s",
        [generation_id],
    )
    return str(rows[0][0]) if rows else None


def _encode_cursor(row: Any) -> str:
    raw = f"{row.created_at.isoformat()}|{row.id}"
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def _decode_cursor(cursor: str, looks_like_id: Callable[[str], bool]) -> tuple[datetime, str]:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        created, row_id = base64.urlsafe_b64decode(padded.encode()).decode().split("|")
        created_at = datetime.fromisoformat(created)
        if created_at.tzinfo is None or not looks_like_id(row_id):
            raise ValueError(cursor)
        # In UTC, as the database compares it: a time near year 1 or 9999 with an offset
        # overflows here rather than in the query (which was a 500).
        created_at = created_at.astimezone(UTC)
    except (ValueError, binascii.Error, UnicodeDecodeError, OverflowError):
        raise ApiError(
            "invalid_request",
            "The cursor is not valid.",
            details={"cursor": "Not valid."},
        ) from None
    return created_at, row_id


def keyset_page(
    query: QuerySet[Any], *, limit: int, cursor: str | None, looks_like_id: Callable[[str], bool]
) -> tuple[list[Any], str | None]:
    """One page of `query`, newest first, keyset-paginated on (created_at, id): a stable
    order, so no page repeats or skips a row while new ones are created."""
    if cursor:
        created_at, row_id = _decode_cursor(cursor, looks_like_id)
        query = query.filter(Q(created_at__lt=created_at) | Q(created_at=created_at, id__lt=row_id))
    rows = list(query.order_by("-created_at", "-id")[: limit + 1])
    next_cursor = _encode_cursor(rows[limit - 1]) if len(rows) > limit else None
    return rows[:limit], next_cursor


def generation_list(
    *, user: AbstractBaseUser, limit: int, cursor: str | None
) -> tuple[list[Generation], str | None]:
    """The user's generations, newest first, keyset-paginated on (created_at, id)."""
    return keyset_page(
        Generation.objects.filter(user_id=user.pk),
        limit=limit,
        cursor=cursor,
        looks_like_id=looks_like_generation_id,
    )


@dataclass(frozen=True)
class Limits:
    rate_limit_per_minute: int
    tokens_per_day: int
    max_active_generations: int
    max_connections: int


_LIMITS = ("rate_limit_per_minute", "tokens_per_day", "max_active_generations", "max_connections")


def _limits(overrides: dict[str, Any]) -> Limits:
    """The user's override of each limit, or the setting where it has none."""

    def pick(field: str, default: int) -> int:
        value = overrides.get(field)
        return default if value is None else int(value)

    return Limits(
        rate_limit_per_minute=pick("rate_limit_per_minute", settings.RATE_LIMIT_PER_MINUTE),
        tokens_per_day=pick("tokens_per_day", settings.TOKENS_PER_DAY),
        max_active_generations=pick("max_active_generations", settings.MAX_ACTIVE_GENERATIONS),
        max_connections=pick("max_connections", settings.MAX_CONNECTIONS_PER_USER),
    )


def limits_for(user_id: int) -> Limits:
    """In SQL, as row_state: every WebSocket connection reads it."""
    _generations, limits = _tables()
    rows = _rows(f"SELECT {', '.join(_LIMITS)} FROM {limits} WHERE user_id = %s", [user_id])
    return _limits(dict(zip(_LIMITS, rows[0], strict=True)) if rows else {})


@dataclass(frozen=True)
class Usage:
    limits: Limits
    active: int  # generations queued or running
    tokens_today: int  # completion tokens of the generations created since 00:00 UTC


def lock_user(user_id: int) -> None:
    """Take the user's row lock until the transaction ends: it serialises the user's creates
    and claims, whose limit and quota checks must see each other's writes. On SQLite the
    database's write lock, which every transaction takes at its start, does that instead."""
    if connection.features.has_select_for_update:
        users, pk = _user_table_and_pk()
        _rows(f"SELECT 1 FROM {users} WHERE {pk} = %s FOR UPDATE", [user_id])


def _user_table_and_pk() -> tuple[str, str]:
    model = get_user_model()
    users = sql_names(model)
    return users.table, users.column[model._meta.pk.attname]


def _rows(sql: str, params: list[Any]) -> list[tuple[Any, ...]]:
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return [tuple(row) for row in cursor.fetchall()]


def _one_row(sql: str, params: list[Any]) -> tuple[Any, ...]:
    rows = _rows(sql, params)
    assert rows  # a SELECT of aggregates and constants has its row
    return rows[0]


def _tables() -> tuple[str, str]:
    return sql_names(Generation).table, sql_names(UserLimits).table


# Stands for the user's id among a `_read_for` statement's parameters.
_USER = object()


def _read_for(user_id: int, columns: str, params: list[Any], *, lock: bool) -> tuple[Any, ...]:
    """One row of `columns`, scalar subqueries that name the user as `{user}` (whose
    parameter is `_USER` in `params`), in one round trip. With `lock`, the same statement
    takes the user's row lock first (lock_user) where the database has row locks: the
    subqueries then refer to the locked row, so they run once the lock is granted and, under
    READ COMMITTED, see every transaction committed before (tests/api/test_usage_lock.py).
    Given the user's id as a parameter instead, MariaDB read them before the lock was
    granted, and missed what the transaction it waited for had committed."""
    if lock and connection.features.has_select_for_update:
        users, pk = _user_table_and_pk()
        rows = _rows(
            f"SELECT {columns.format(user=f'{users}.{pk}')}"
            f" FROM {users} WHERE {pk} = %s FOR UPDATE",
            [*(p for p in params if p is not _USER), user_id],
        )
        if rows:
            return rows[0]
        # No such user: nothing to lock, as lock_user.
    return _one_row(
        f"SELECT {columns.format(user='%s')}",
        [user_id if p is _USER else p for p in params],
    )


def usage_now(user_id: int, *, lock: bool = False) -> Usage:
    """The user's limits and what counts against them, in one round trip: a create checks
    them all (docs/scaling.md: through the ORM, these were three statements and about 3 ms
    of this machine's CPU; the SQL is written here so that it costs one). With `lock`, the
    same statement takes the user's row lock (lock_user), as a create does before it checks
    them."""
    generations, limits = _tables()
    columns = ", ".join(
        f"(SELECT {field} FROM {limits} WHERE user_id = {{user}})" for field in _LIMITS
    )
    start = start_of_day_utc()
    *overrides, active, active_tokens, settled = _read_for(
        user_id,
        f"{columns},"
        f" (SELECT COUNT(*) FROM {generations} WHERE user_id = {{user}} AND status IN (%s, %s)),"
        f" (SELECT COALESCE(SUM(completion_tokens), 0) FROM {generations}"
        f"  WHERE user_id = {{user}} AND status IN (%s, %s) AND created_at >= %s),"
        f" {_settled_on_day()}",
        [
            *(_USER for _ in _LIMITS),
            _USER,
            *sorted(ACTIVE_STATUSES),
            _USER,
            *sorted(ACTIVE_STATUSES),
            connection.ops.adapt_datetimefield_value(start),
            _USER,
            connection.ops.adapt_datefield_value(start.date()),
        ],
        lock=lock,
    )
    return Usage(
        limits=_limits(dict(zip(_LIMITS, overrides, strict=True))),
        active=int(active),
        tokens_today=int(active_tokens) + int(settled),
    )


def _settled_on_day() -> str:
    """A subquery of the quota's reads: the user's settled usage of a day (its parameter), the
    tokens of that day's finished generations (core.models.SettledUsage). The reads add those
    of the user's active generations (queued or running), at most MAX_ACTIVE_GENERATIONS
    rows found by the (user, status) index: a read costs the same however many generations
    the user's day held (docs/scaling.md, "The daily quota's read")."""
    settled = sql_names(SettledUsage)
    return (
        f"(SELECT COALESCE(SUM({settled.column['completion_tokens']}), 0) FROM {settled.table}"
        f" WHERE {settled.column['user_id']} = {{user}} AND {settled.column['day']} = %s)"
    )


def start_of_day_utc() -> datetime:
    now = datetime.now(UTC)
    return now.replace(hour=0, minute=0, second=0, microsecond=0)


def quota_left_today(user_id: int, *, excluding: str, lock: bool = False) -> int:
    """The user's daily quota less what today's other generations hold of it: the completion
    tokens of each, a running one counted at its cap (what it may still use) rather than at
    its tokens so far. A generation that starts gets at most this (writer.generation_claim),
    so concurrent generations together never pass the quota. One round trip, as usage_now,
    and with `lock` the same statement takes the user's row lock, as a claim does."""
    generations, limits = _tables()
    start = start_of_day_utc()
    override, active, settled = _read_for(
        user_id,
        f"(SELECT tokens_per_day FROM {limits} WHERE user_id = {{user}}),"
        " (SELECT COALESCE(SUM(CASE"
        "   WHEN status = %s AND token_cap IS NOT NULL"
        "   THEN (CASE WHEN token_cap > completion_tokens THEN token_cap"
        "         ELSE completion_tokens END)"
        "   ELSE completion_tokens END), 0)"
        f"  FROM {generations} WHERE user_id = {{user}} AND status IN (%s, %s)"
        "   AND created_at >= %s AND id <> %s),"
        f" {_settled_on_day()}",
        [
            _USER,
            Status.RUNNING,
            _USER,
            *sorted(ACTIVE_STATUSES),
            connection.ops.adapt_datetimefield_value(start),
            excluding,
            _USER,
            connection.ops.adapt_datefield_value(start.date()),
        ],
        lock=lock,
    )
    held = int(active) + int(settled)
    return _limits({"tokens_per_day": override}).tokens_per_day - held


def usage_for(user: AbstractBaseUser) -> dict[str, Any]:
    usage = usage_now(user.pk)
    return {
        "tokens_today": usage.tokens_today,
        "tokens_per_day": usage.limits.tokens_per_day,
        "active": usage.active,
        "max_active": usage.limits.max_active_generations,
    }
