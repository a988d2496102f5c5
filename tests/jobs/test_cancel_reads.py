"""What a cancel of a running generation sends to the database and the log while it waits for
the worker: the flag, then the status alone until the worker has ended it, then the row once;
it neither fences nor reads the generation's log (jobs.cancel)."""

from __future__ import annotations

import re
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from django.db.backends.utils import CursorWrapper

from core.models import Generation
from jobs import eventlog
from jobs.cancel import cancel
from jobs.runner import run_generation_job
from tests.fake_openai import expected_text
from tests.harness import wait_until
from tests.jobs.support import new_generation, unique
from tests.tier_env import TIER

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("inproc_worker"),
    # The test reads the row while this process's worker writes it. On the embedded tier the
    # in-process test database is SQLite in memory with a shared cache, which refuses such a
    # read at once ("database table is locked") where the service's own file database (WAL)
    # serves it; the cancel's statements are the same on both (tests/jobs/test_cancel.py
    # runs the cancel itself on each tier).
    pytest.mark.skipif(TIER != "distributed", reason="reads while an in-process worker writes"),
]

STATUS_READ = re.compile(
    r"^SELECT [`\"]?status[`\"]? FROM [`\"]?api_generation[`\"]? WHERE [`\"]?id[`\"]? = ",
    re.I,
)
FLAG = re.compile(r"^UPDATE [`\"]?api_generation[`\"]? SET [`\"]?cancel_requested[`\"]?", re.I)
WHOLE_ROW_READ = re.compile(r"^SELECT [`\"]?api_generation[`\"]?\.[`\"]?id[`\"]?, ", re.I)


def test_a_running_generations_cancel_reads_its_status_until_it_ends_then_the_row_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # 200 tokens at 20 a second: 10 s, cancelled after its first checkpoint.
    generation = new_generation(unique("[fake tokens=200 rate=20]"))
    log_calls: list[tuple[str, int]] = []
    log_class = type(eventlog.event_log())
    for name in ("take_fence", "read_after_sync"):
        real = getattr(log_class, name)

        def recording(log: Any, *args: Any, _name: str = name, _real: Any = real) -> Any:
            log_calls.append((_name, threading.get_ident()))
            return _real(log, *args)

        monkeypatch.setattr(log_class, name, recording)

    with ThreadPoolExecutor(1) as worker:
        job = worker.submit(run_generation_job, generation.id)
        wait_until(
            lambda: Generation.objects.filter(pk=generation.id, seq__gt=0).exists(),
            timeout_s=15,
        )
        this_thread = threading.get_ident()
        ours: list[str] = []
        real_execute = CursorWrapper._execute  # type: ignore[attr-defined]

        def record(cursor: CursorWrapper, sql: str, *args: Any) -> Any:
            if threading.get_ident() == this_thread:
                ours.append(sql)
            return real_execute(cursor, sql, *args)

        running = Generation.objects.get(pk=generation.id)
        with monkeypatch.context() as patch:
            patch.setattr(CursorWrapper, "_execute", record)
            result = cancel(running)
        job.result(timeout=15)

    assert result.status == "cancelled"
    assert result.usage is not None
    assert result.output == expected_text(result.usage["completion_tokens"])
    assert [name for name, thread in log_calls if thread == this_thread] == []
    assert FLAG.match(ours[0]), ours
    assert ours[1:-1] and all(STATUS_READ.match(sql) for sql in ours[1:-1]), ours
    assert WHOLE_ROW_READ.match(ours[-1]), ours
