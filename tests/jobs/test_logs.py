"""Logs of the processes that run generations (README "Logs"): with LOG_FORMAT=json every
line is one JSON object, the SDK's HTTP client writes no line per provider request, and
run_huey prints each line once."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import create, wait_terminal
from tests.harness import FakeLLM, Service
from tests.jobs.support import unique

DAPHNE_ACCESS_LINE = re.compile(r'^\S+:\d+ - - \[[^\]]+\] "')


@pytest.fixture(scope="module")
def chatty_service(fake_llm: FakeLLM) -> Iterator[Service]:
    instance = Service(fake_llm, env={"LOG_LEVEL": "INFO", "LOG_FORMAT": "json"}).start()
    yield instance
    instance.stop()


def process_logs(service: Service) -> list[Path]:
    """The logs of the processes that ran generations: the worker's (distributed), else the
    web process's, which runs them itself (embedded)."""
    workers = sorted(service.dir.glob("worker*.log"))
    return workers or sorted(service.dir.glob("web*.log"))


def test_every_line_is_json_and_provider_requests_write_no_line(
    chatty_service: Service,
) -> None:
    with chatty_service.client("alice") as client:
        ids = [create(client, unique(f"log {n} [fake tokens=5]"))["id"] for n in range(3)]
        # One that fails, so that the provider's message is logged.
        failing = create(client, unique("log [fake fail=400x9 code=unsupported_parameter]"))
        for generation_id in [*ids, failing["id"]]:
            wait_terminal(client, generation_id)

    lines = [
        line
        for path in process_logs(chatty_service)
        for line in path.read_text(errors="replace").splitlines()
        # Daphne's access log (embedded tier: the web process runs the generations) is the
        # web server's, written by Daphne itself, not by the worker's code checked here.
        if line.strip() and not DAPHNE_ACCESS_LINE.match(line)
    ]
    records = []
    for line in lines:
        try:
            records.append(json.loads(line))
        except ValueError:
            pytest.fail(f"a log line that is not JSON: {line!r}")
    # The generations' own lines are there (so the check above looked at the right process).
    started = [r for r in records if "attempt 1 started" in r["message"]]
    assert {r["generation_id"] for r in started} >= set(ids)
    # run_huey's own start line, once, as JSON (it used to come twice, once as plain text).
    if chatty_service.workers:
        assert [r["message"] for r in records].count(
            next(r["message"] for r in records if "Huey consumer started" in r["message"])
        ) == 1
    # No "HTTP Request: POST .../chat/completions" line from httpx2 (or httpx) per request.
    assert not [r for r in records if r["logger"] in ("httpx", "httpx2")]
    assert not [r for r in records if "HTTP Request" in r["message"]]
    # Each line once.
    messages = [(r["logger"], r["message"], r["ts"]) for r in records]
    assert len(messages) == len(set(messages))
    # The provider's refusal, at WARNING with the generation id and the provider's words.
    refusal = [
        r for r in records if r.get("generation_id") == failing["id"] and r["level"] == "warning"
    ]
    assert refusal and "injected failure" in refusal[0]["message"]
