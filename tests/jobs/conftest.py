"""Fixtures for the worker's tests.

The black-box tests use the session ``service`` of tests/conftest.py and a few variants of it.
The in-process tests (pytest-django) run ``jobs.runner`` in this process, whose settings
(tests/tier_env.py) point the provider at ``FAKE_LLM_PORT``: ``inproc_fake_llm`` serves the
fake OpenAI-compatible server there, from a thread with its own event loop.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from pytest_django.fixtures import Settings

from tests.fake_openai import Behaviour, FakeOpenAI
from tests.harness import FakeLLM, Service
from tests.tier_env import FAKE_LLM_PORT


class InProcessFakeLLM:
    """tests.fake_openai.FakeOpenAI on its own loop thread, on this process's provider port."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.fake = FakeOpenAI(Behaviour())
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="fake-llm", daemon=True)
        self._started = threading.Event()
        self._error: BaseException | None = None

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self.fake.start("127.0.0.1", self.port))
        except BaseException as exc:
            self._error = exc
            self._started.set()
            return
        self._started.set()
        self._loop.run_forever()

    def start(self) -> InProcessFakeLLM:
        self._thread.start()
        # The port is bound before the first test asks for it: no sleep-and-hope.
        if not self._started.wait(10):
            raise TimeoutError("the in-process fake LLM did not start")
        if self._error is not None:
            raise self._error
        return self

    def requests(self) -> list[dict[str, Any]]:
        async def copy() -> list[dict[str, Any]]:
            return list(self.fake.requests)

        return asyncio.run_coroutine_threadsafe(copy(), self._loop).result(5)

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.fake.stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()


@pytest.fixture(scope="session")
def inproc_fake_llm() -> Iterator[InProcessFakeLLM]:
    fake = InProcessFakeLLM(FAKE_LLM_PORT).start()
    yield fake
    fake.stop()


@pytest.fixture
def inproc_worker(inproc_fake_llm: InProcessFakeLLM, settings: Settings) -> InProcessFakeLLM:
    """This process as a worker, for tests that call the runner and the reaper themselves.

    ``run_generation_job`` starts the process's housekeeping thread, which reaps
    every HEARTBEAT_TIMEOUT_S / 4, read once when it starts. An hour keeps it asleep for the
    whole run, so that the reaper runs only when a test calls it, and no query of that thread
    lands between tests, where pytest-django forbids them.
    """
    settings.HEARTBEAT_TIMEOUT_S = 3600.0
    return inproc_fake_llm


@pytest.fixture(scope="module")
def demo_service(fake_llm: FakeLLM) -> Iterator[Service]:
    """The service with the built-in offline provider, as with no OPENAI_API_KEY."""
    instance = Service(fake_llm, env={"LLM_PROVIDER": "demo"}).start()
    yield instance
    instance.stop()


@pytest.fixture(scope="module")
def single_worker_service(fake_llm: FakeLLM) -> Iterator[Service]:
    """One worker thread in all: a second generation waits in the queue behind the first."""
    instance = Service(fake_llm, env={"HUEY_WORKERS": "1"}).start()
    yield instance
    instance.stop()
