"""Small helpers shared by the worker's tests."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.db.backends.utils import CursorWrapper

from core.models import Generation
from jobs import writer
from jobs.engine import engine
from jobs.eventlog import event_log
from tests.harness import Background, Service, messages, stream_events
from tests.wire import check_event


def run_attempt(claim: writer.Claim) -> None:
    """Run a claimed attempt on the worker's event loop, as a Huey thread does, and wait."""
    engine().run_attempt(claim, stopping=threading.Event())


def unique(prompt: str) -> str:
    """The prompt made unique: the fake server counts failures per prompt, and tests share it."""
    return f"{prompt} #{uuid.uuid4().hex[:12]}"


def requests_with(requests: Iterable[dict[str, Any]], prompt: str) -> list[dict[str, Any]]:
    """The provider requests whose user message is `prompt`."""
    return [
        request
        for request in requests
        if any(
            message.get("role") == "user" and message.get("content") == prompt
            for message in request.get("messages", [])
        )
    ]


def watch(service: Service, generation_id: str, *, username: str = "alice") -> Background:
    """An SSE subscriber from the start, in a thread with its own connection; `.value()` is
    the list of messages it received, through `done`."""

    def run() -> list[dict[str, Any]]:
        with service.client(username) as client:
            status, frames, _ = stream_events(client, generation_id)
        assert status == 200, status
        return messages(frames)

    subscriber = Background(run)
    subscriber.start()
    return subscriber


def assert_gap_free(received: list[dict[str, Any]]) -> None:
    """PROTOCOL §3: after the snapshot (if any), seqs go up by one, and `done` is last."""
    seqs = [message["seq"] for message in received]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), seqs
    assert received[-1]["type"] == "done"
    assert all(message["type"] != "done" for message in received[:-1])


def new_generation(prompt: str, **fields: Any) -> Generation:
    """A queued row, as the API would create it (in-process tests)."""
    user, _ = get_user_model().objects.get_or_create(username="alice")
    return Generation.objects.create(
        user=user, model="gpt-4o-mini", prompt=prompt, max_tokens=1024, **fields
    )


def claimed(prompt: str, **fields: Any) -> writer.Claim:
    """A new queued row (`prompt` made unique), claimed as a worker's claim takes it."""
    generation = new_generation(unique(prompt), **fields)
    claim = writer.generation_claim(generation.id)
    assert claim is not None
    return claim


def logged_events(generation_id: str) -> list[dict[str, Any]]:
    """The generation's replay buffer, decoded (in-process tests); each event checked against
    its model (tests/wire.py)."""
    stored, _ = event_log().read_after_sync(generation_id, 0)
    decoded = [event.decoded() for event in stored]
    for message in decoded:
        check_event(message)
    return decoded


@contextmanager
def all_statements(threads: dict[str, set[int]] | None = None) -> Iterator[list[str]]:
    """Every SQL statement that any thread of this process sends to the database meanwhile.

    The worker runs a generation's database work on its engine's own threads and connections
    (jobs.engine), which ``CaptureQueriesContext`` of the test's connection does not see; the
    statements are recorded where every Django cursor sends them, and still run for real;
    `threads` gets the threads that sent each statement."""
    statements: list[str] = []
    lock = threading.Lock()
    original = CursorWrapper._execute  # type: ignore[attr-defined]

    def recording(self: CursorWrapper, sql: str, params: Any, *args: Any) -> Any:
        with lock:
            statements.append(sql)
            if threads is not None:
                threads.setdefault(sql, set()).add(threading.get_ident())
        return original(self, sql, params, *args)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(CursorWrapper, "_execute", recording)
        yield statements


def checkpoint(
    generation_id: str,
    attempt: int,
    *,
    output: str,
    seq: int,
    completion_tokens: int,
    reasoning: str = "",
) -> tuple[bool, bool]:
    """One attempt's checkpoint, as the worker's per-tick statement writes it: (still ours,
    cancel requested)."""
    one = writer.Checkpoint(generation_id, attempt, output, reasoning, seq, completion_tokens)
    return writer.generation_checkpoint_many([one])[generation_id]
