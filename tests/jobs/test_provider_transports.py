"""Both HTTP transports the SDK can stream through (OPENAI_HTTP_TRANSPORT) read an answer whole,
and a connection cut mid-stream is a retried attempt on either, not a lost generation. Through
aiohttp the body is read straight from aiohttp's reader, unless it is compressed."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from pytest_django.fixtures import Settings

from jobs.engine import engine
from jobs.providers import base
from jobs.providers.openai_compatible import OpenAIProvider, _body_reader
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


def _close_clients() -> None:
    """The worker's clients live as long as its process; a test's provider's go with the test."""
    for client in base.get_provider("openai")._async_clients.values():  # type: ignore[attr-defined]
        engine().call(client.close())


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
        _close_clients()

    whole.refresh_from_db()
    assert (whole.status, whole.output, whole.attempt) == ("completed", expected_text(40), 1)
    cut.refresh_from_db()
    assert (cut.status, cut.output, cut.attempt) == ("completed", expected_text(30), 2)
    assert {type(client._client).__name__ for client in clients} == {CLIENT_CLASS[transport]}


@pytest.mark.parametrize("transport", ["aiohttp", "httpx"])
def test_a_compressed_stream_is_read_whole_on_either_transport(
    transport: str, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings.OPENAI_HTTP_TRANSPORT = transport
    monkeypatch.setattr(base, "_instances", {})
    generation = new_generation(unique("[fake tokens=40 rate=400 gzip=1]"))
    try:
        run_generation_job(generation.id)
    finally:
        _close_clients()
    generation.refresh_from_db()
    assert (generation.status, generation.output) == ("completed", expected_text(40))


def test_the_aiohttp_body_is_read_straight_from_aiohttp_unless_compressed(
    settings: Settings,
) -> None:
    settings.OPENAI_HTTP_TRANSPORT = "aiohttp"

    async def readers() -> list[object]:
        provider = OpenAIProvider()
        client = provider._async_client()
        found: list[object] = []
        try:
            for directive in ("[fake tokens=3]", "[fake tokens=3 gzip=1]"):
                create = client.chat.completions.with_streaming_response.create
                async with create(
                    model="fake",
                    messages=[{"role": "user", "content": unique(directive)}],
                    stream=True,
                ) as response:
                    found.append(getattr(_body_reader(response), "__self__", None))
        finally:
            await client.close()
        return found

    plain, compressed = asyncio.run(readers())
    assert isinstance(plain, aiohttp.StreamReader)
    assert compressed is None  # through the SDK's iter_bytes, which decodes it
