"""One provider client per worker process, however many threads ask for it at once."""

from __future__ import annotations

import threading

import pytest

from jobs.providers import base


def test_threads_asking_for_the_provider_at_once_all_get_the_same_client(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(base, "_instances", {})
    threads_count = 16
    start = threading.Barrier(threads_count)
    got: list[object] = []

    def ask() -> None:
        start.wait()
        got.append(base.get_provider("openai"))

    threads = [threading.Thread(target=ask) for _ in range(threads_count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    # Creating the SDK client takes long enough (an SSL context) that, unlocked, threads
    # released together each made their own: a connection pool each, and no reuse.
    assert len(got) == threads_count
    assert len({id(provider) for provider in got}) == 1
