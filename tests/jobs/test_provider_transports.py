"""Both HTTP transports the SDK can stream through (OPENAI_HTTP_TRANSPORT) read an answer whole,
and a connection cut mid-stream is a retried attempt on either, not a lost generation."""

from __future__ import annotations

import pytest
from pytest_django.fixtures import Settings

from jobs.engine import engine
from jobs.providers import base
from jobs.runner import run_generation_job
from tests.fake_openai import expected_text
from tests.jobs.conftest import InProcessFakeLLM
from tests.jobs.support import new_generation, unique

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("inproc_worker"),
]

# The SDK's http_client classes: its aiohttp one, and its default httpx one.
CLIENT_CLASS = {"aiohttp": "_InstalledAioHttpClient", "httpx": "AsyncHttpxClientWrapper"}


@pytest.mark.parametrize("transport", ["aiohttp", "httpx"])
def test_each_transport_reads_the_whole_answer_and_retries_a_cut_connection(
    transport: str,
    inproc_worker: InProcessFakeLLM,
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings.OPENAI_HTTP_TRANSPORT = transport
    # A provider built for this setting, not the process's cached one.
    monkeypatch.setattr(base, "_instances", {})
    whole = new_generation(unique("[fake tokens=40 rate=400]"))
    cut = new_generation(unique("[fake tokens=30 rate=400 drop=6x1]"))

    try:
        run_generation_job(whole.id)
        run_generation_job(cut.id)  # cut after 6 tokens: handed back to the queue
        run_generation_job(cut.id)  # the next attempt, as the next worker to take it
        clients = list(base.get_provider("openai")._async_clients.values())  # type: ignore[attr-defined]
    finally:
        # The worker's clients live as long as its process; this one goes with the test.
        for client in base.get_provider("openai")._async_clients.values():  # type: ignore[attr-defined]
            engine().call(client.close())

    whole.refresh_from_db()
    assert (whole.status, whole.output, whole.attempt) == ("completed", expected_text(40), 1)
    cut.refresh_from_db()
    assert (cut.status, cut.output, cut.attempt) == ("completed", expected_text(30), 2)
    assert {type(client._client).__name__ for client in clients} == {CLIENT_CLASS[transport]}
