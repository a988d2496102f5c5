"""Which provider runs generations (PROTOCOL §7): a configuration that names a provider URL
uses it; the offline demo only when nothing is named, and labelled as such."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import pytest

from tests.conftest import create, wait_terminal
from tests.fake_openai import expected_text
from tests.harness import PYTHON, ROOT, FakeLLM, Service
from tests.jobs.support import requests_with, unique


@pytest.fixture(scope="module")
def base_url_only_service(fake_llm: FakeLLM) -> Iterator[Service]:
    """Only OPENAI_BASE_URL, as for a local vLLM, Ollama or llama.cpp server: no key, no
    LLM_PROVIDER."""
    instance = Service(fake_llm)
    for name in ("LLM_PROVIDER", "OPENAI_API_KEY"):
        instance.env.pop(name, None)
    instance.start()
    yield instance
    instance.stop()


def test_base_url_alone_selects_the_openai_compatible_provider(
    base_url_only_service: Service, fake_llm: FakeLLM
) -> None:
    prompt = unique("local server [fake tokens=20]")
    with base_url_only_service.client("alice") as client:
        generation = create(client, prompt)
        final = wait_terminal(client, generation["id"])

    assert final["provider"] == "openai"
    assert final["status"] == "completed"
    assert final["output"] == expected_text(20)
    assert len(requests_with(fake_llm.requests(), prompt)) == 1


def test_generations_of_a_named_provider_are_labelled_with_it(service: Service) -> None:
    with service.client("alice") as client:
        generation = create(client, unique("labelled [fake tokens=3]"))
        final = wait_terminal(client, generation["id"])

    assert generation["provider"] == final["provider"] == "openai"


def test_openai_provider_with_neither_key_nor_base_url_refuses_to_start(service: Service) -> None:
    env = {k: v for k, v in service.env.items() if k not in ("OPENAI_API_KEY", "OPENAI_BASE_URL")}
    env["LLM_PROVIDER"] = "openai"

    result = subprocess.run(
        [PYTHON, "manage.py", "check"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert result.returncode != 0
    assert "OPENAI_API_KEY" in result.stderr and "OPENAI_BASE_URL" in result.stderr
