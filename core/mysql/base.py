"""Django's MySQL backend with fewer round trips per request (docs/scaling.md, "Round trips
per create and claim"). Both changes keep what Django guarantees; they only send less.

- A transaction begins with one ``START TRANSACTION``, and the session stays in autocommit
  mode, where Django's backend sends ``SET autocommit=0`` to begin and ``SET autocommit=1``
  after the commit or rollback: two round trips where one does. (The client library sends
  ``SET autocommit`` only when the session's mode, which the server reports with every
  reply, differs; so with the mode never turned off, Django's ``SET autocommit=1`` after a
  commit is not sent.)
- A kept connection's health check (CONN_HEALTH_CHECKS, on for the request threads that keep
  their connections, project.handler) is the request's first statement itself where that
  statement may be sent twice: a ``START TRANSACTION``, or a ``SELECT`` outside a
  transaction. If it finds the connection lost (the server restarted, or dropped it), it is
  sent again on a new connection, as Django's check would have replaced the connection
  before it. Any other first statement is preceded by the ping, as in Django.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import MySQLdb
from django.db.backends.mysql import base

# The client's codes for a connection that is gone: "server has gone away", "lost
# connection" (during a query, or at a system call), and a server's "disconnected for
# inactivity".
_LOST = frozenset({2006, 2013, 2055, 4031})

T = TypeVar("T")


def _lost(error: Exception) -> bool:
    if isinstance(error, MySQLdb.InterfaceError):  # the client already knew it closed
        return True
    return (
        isinstance(error, MySQLdb.OperationalError)
        and bool(error.args)
        and (error.args[0] in _LOST)
    )


def _reads(query: str) -> bool:
    return query.lstrip()[:6].upper() == "SELECT"


class CursorWrapper(base.CursorWrapper):
    def __init__(self, cursor: Any, db: DatabaseWrapper) -> None:
        super().__init__(cursor)
        self.db = db

    def execute(self, query: str, args: Any = None) -> Any:
        db = self.db
        if not db.unverified:  # every statement but a request's first
            return super().execute(query, args)
        if not (_reads(query) and not db.in_atomic_block and db.connection.get_autocommit()):
            self._check(db)
        # `self.cursor` is read at each call: a new connection's cursor after a renewal.
        return db.first(lambda: base.CursorWrapper.execute(self, query, args), self._renewed)

    def executemany(self, query: str, args: Any) -> Any:
        if self.db.unverified:
            self._check(self.db)
        return super().executemany(query, args)

    def _check(self, db: DatabaseWrapper) -> None:
        """Django's health check, for a first statement that must not be sent twice."""
        db.unverified = False
        if not db.is_usable():
            db.reconnect()
            self._renewed()

    def _renewed(self) -> None:
        self.cursor = self.db.connection.cursor()


class DatabaseWrapper(base.DatabaseWrapper):
    # A kept connection that has not answered since its request began: its first statement
    # checks it (see the module's docstring).
    unverified = False

    def get_new_connection(self, conn_params: dict[str, Any]) -> Any:
        self.unverified = False
        return super().get_new_connection(conn_params)

    def close_if_health_check_failed(self) -> None:
        # Django's check pings here; this one leaves it to the first statement.
        checked = getattr(self, "health_check_done", False)
        if self.connection is None or not getattr(self, "health_check_enabled", False) or checked:
            return
        self.unverified = True
        self.health_check_done = True

    def reconnect(self) -> None:
        """A new connection in place of one found lost, outside any transaction."""
        self.close()
        self.connect()
        self.health_check_done = True

    def create_cursor(self, name: str | None = None) -> CursorWrapper:
        return CursorWrapper(self.connection.cursor(), self)

    def _set_autocommit(self, autocommit: bool) -> None:
        with self.wrap_database_errors:
            # Only a command actually sent checks the connection.
            if self.connection.get_autocommit() != autocommit:
                self.first(lambda: self.connection.autocommit(autocommit))

    def _start_transaction_under_autocommit(self) -> None:
        with self.wrap_database_errors:
            if self.connection.get_autocommit():
                self.first(lambda: self.connection.query("START TRANSACTION"))
            # else: with autocommit off, the session is in a transaction already.

    def first(self, send: Callable[[], T], renewed: Callable[[], None] | None = None) -> T:
        """`send()`, a command that may be sent twice: again on a new connection (after
        `renewed()`) if it is the connection's first since its request began and finds the
        connection lost."""
        if not self.unverified:
            return send()
        self.unverified = False
        try:
            return send()
        except (MySQLdb.OperationalError, MySQLdb.InterfaceError) as error:
            if not _lost(error):
                raise
        self.reconnect()
        if renewed is not None:
            renewed()
        return send()
