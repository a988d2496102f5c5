from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.harness import FakeLLM, Service, wait_until
from tests.tier_env import RUN_DIR, TIER


def pytest_report_header() -> str:
    return f"tier: {TIER}, process logs in {RUN_DIR}"


@pytest.fixture(scope="session")
def fake_llm() -> Iterator[FakeLLM]:
    fake = FakeLLM()
    yield fake
    fake.stop()


@pytest.fixture(scope="session")
def service(fake_llm: FakeLLM) -> Iterator[Service]:
    """The service on this run's tier: one Daphne (and one worker when distributed)."""
    instance = Service(fake_llm).start()
    yield instance
    instance.stop()


@pytest.fixture
def alice(service: Service) -> Iterator[httpx.Client]:
    with service.client("alice") as client:
        yield client


@pytest.fixture
def bob(service: Service) -> Iterator[httpx.Client]:
    with service.client("bob") as client:
        yield client


@pytest.fixture
def anonymous(service: Service) -> Iterator[httpx.Client]:
    with service.client(None) as client:
        yield client


def create(client: httpx.Client, prompt: str = "hello", **fields: Any) -> dict[str, Any]:
    response = client.post("/api/v1/generations", json={"prompt": prompt, **fields})
    assert response.status_code == 202, response.text
    body: dict[str, Any] = response.json()
    return body


def wait_terminal(
    client: httpx.Client, generation_id: str, timeout_s: float = 60
) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        body: dict[str, Any] = client.get(f"/api/v1/generations/{generation_id}").json()
        return body if body["status"] in ("completed", "failed", "cancelled") else None

    result: dict[str, Any] = wait_until(check, timeout_s=timeout_s, interval_s=0.1)
    return result
