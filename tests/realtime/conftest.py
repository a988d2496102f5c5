"""Fixtures shared by the black-box WebSocket and ticket tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.harness import FakeLLM, Service

LIMITED_ENV = {
    "WS_AUTH_TIMEOUT": "1",
    "ALLOWED_ORIGINS": "https://app.example",
    "MAX_CONNECTIONS_PER_USER": "2",
    "WS_MAX_BUFFER": str(64 * 1024),
    "TICKET_TTL_S": "1",
}


@pytest.fixture(scope="session")
def limited_service(fake_llm: FakeLLM) -> Iterator[Service]:
    """A second service with the tight settings of LIMITED_ENV: a 1 s auth deadline, one
    allowed browser origin, two connections per user, a 64 KiB WebSocket send buffer and
    1 s tickets. One service for all of them, because each costs seconds to start (mostly
    MySQL migrations).

    None of these settings changes what a client sees that authenticates at once, reads what
    it is sent and holds one connection; each test on this service uses its own usernames,
    so one test's connections never count toward another's limit.
    """
    instance = Service(fake_llm, env=LIMITED_ENV).start()
    yield instance
    instance.stop()
