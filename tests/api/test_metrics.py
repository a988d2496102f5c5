"""Metrics (docs/metrics.md): every process exposes its own collectors; a web process's
`GET /metrics` adds the gauges read from the database and the queue.

Black-box: real Daphne and worker processes on the run's tier, scraped over HTTP and parsed
with prometheus_client's own parser. On the distributed tier the worker (`manage.py run_huey`)
serves its counters on WORKER_METRICS_PORT; on the embedded tier the worker runs in the web
process and its counters are in that process's /metrics. Each test reads the metrics before
and after what it does, so that it holds whatever ran before it on the same service.
"""

from __future__ import annotations

import json
import socket
import uuid
from collections.abc import Iterator

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from websockets.sync.client import connect

from tests.api.support import fresh_rate_window
from tests.conftest import create, wait_terminal
from tests.harness import FakeLLM, Service, make_token, stream_events, wait_until
from tests.tier_env import TIER, free_port
from tests.wire import decoded_frame

METRICS_TOKEN = "metrics-token-0123456789"
RATE_LIMIT_PER_MINUTE = 3
WORKER_METRICS_PORT = free_port()
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
# Series only a web process's /metrics has: read at scrape time from the source of truth.
SCRAPE_TIME_SERIES = ("llm_generations", "llm_generations_active", "llm_queue_depth")


@pytest.fixture(scope="module")
def metered(fake_llm: FakeLLM) -> Iterator[Service]:
    """A service whose /metrics needs a token, with a low rate limit (each test uses its own
    users) and one worker thread, so that a second generation waits in the queue. Its worker
    process (distributed tier) serves its metrics on WORKER_METRICS_PORT."""
    instance = Service(
        fake_llm,
        env={
            "METRICS_TOKEN": METRICS_TOKEN,
            "RATE_LIMIT_PER_MINUTE": str(RATE_LIMIT_PER_MINUTE),
            "HUEY_WORKERS": "1",
            "WORKER_METRICS_PORT": str(WORKER_METRICS_PORT),
        },
    ).start()
    if TIER == "distributed":
        # The worker serves its port once its threads have started, after Django's set-up.
        wait_until(worker_port_answers, timeout_s=30, interval_s=0.2)
    yield instance
    instance.stop()


def worker_port_answers() -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{WORKER_METRICS_PORT}/metrics").status_code == 200
    except httpx.HTTPError:
        return False


def parse(text: str) -> Samples:
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def scrape(service: Service, *, web: int = 0, token: str | None = METRICS_TOKEN) -> Samples:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    response = httpx.get(service.url("/metrics", web=web), headers=headers, timeout=30)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=")
    return parse(response.text)


def scrape_worker_port(port: int = WORKER_METRICS_PORT) -> Samples:
    response = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=30)
    assert response.status_code == 200, response.text
    return parse(response.text)


def scrape_worker(service: Service) -> Samples:
    """Where the worker's counters are: its own port, or the web process it runs in."""
    return scrape_worker_port() if TIER == "distributed" else scrape(service)


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sample's value; absent (never recorded) counts as 0 only where asked for."""
    return samples[(name, frozenset(labels.items()))]


def value_or_zero(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def names(samples: Samples) -> set[str]:
    return {name for name, _ in samples}


def user(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


# --- What a generation leaves behind -----------------------------------------------------------


def test_a_streamed_generation_shows_in_the_counters_and_histograms(metered: Service) -> None:
    before = scrape_worker(metered)
    model = "gpt-4o-mini"
    with metered.client(user("streamer")) as client:
        generation = create(client, "metered [fake tokens=60 rate=60 ttft=150]")
        status, frames, _ = stream_events(client, generation["id"])
    assert status == 200
    kinds = [frame["data"]["type"] for frame in frames]
    assert kinds[-1] == "done"

    def finished() -> Samples | None:
        # The worker counts the generation just after it wrote the final row.
        now = scrape_worker(metered)
        name = "llm_generations_finished_total"
        labels = {"status": "completed", "finish_reason": "stop"}
        return now if value(now, name, **labels) > value(before, name, **labels) else None

    after: Samples = wait_until(finished, timeout_s=15, interval_s=0.2)

    def grew(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value_or_zero(before, name, **labels)

    assert grew("llm_generations_finished_total", status="completed", finish_reason="stop") == 1
    assert grew("llm_events_published_total", type="done") == 1
    assert grew("llm_events_published_total", type="delta") >= kinds.count("delta") >= 1
    # One time to first token per generation, and it includes the provider's 150 ms.
    assert grew("llm_time_to_first_token_seconds_count", model=model) == 1
    assert grew("llm_time_to_first_token_seconds_sum", model=model) >= 0.15
    assert grew("llm_provider_time_to_first_token_seconds_count", model=model) == 1
    assert grew("llm_provider_time_to_first_token_seconds_sum", model=model) >= 0.15
    assert grew("llm_time_to_first_token_seconds_bucket", model=model, le="+Inf") == 1
    assert grew("llm_time_to_first_token_seconds_bucket", model=model, le="0.1") == 0
    # The fake streams 60 tokens/s for a second; the worker sees them arrive at about that
    # pace (a wide margin: a loaded machine delays some reads and bunches others).
    assert grew("llm_tokens_per_second_count", model=model) == 1
    assert 20 <= grew("llm_tokens_per_second_sum", model=model) <= 240

    web = scrape(metered)
    assert value(web, "llm_generations_active") == 0
    assert value(web, "llm_metrics_source_up", source="database") == 1
    assert value(web, "llm_metrics_source_up", source="queue") == 1


@pytest.mark.skipif(TIER != "distributed", reason="a worker process: distributed tier")
def test_the_worker_process_serves_its_own_counters_and_the_web_process_its_own(
    metered: Service,
) -> None:
    """Each process is a target of its own: Prometheus sums them, so none may show another's
    counts, and the scrape-time gauges are the web process's alone."""
    worker_before, web_before = scrape_worker_port(), scrape(metered)
    with metered.client(user("split")) as client:
        generation = create(client, "split [fake tokens=5]")
        assert wait_terminal(client, generation["id"])["status"] == "completed"
    done = ("llm_events_published_total", frozenset({("type", "done")}))
    worker: Samples = wait_until(
        lambda: now if (now := scrape_worker_port())[done] > worker_before[done] else None,
        timeout_s=15,
        interval_s=0.2,
    )
    web = scrape(metered)

    assert worker[done] == worker_before[done] + 1
    assert web[done] == web_before[done]  # the web process published none of it
    assert value(worker, "llm_time_to_first_token_seconds_count", model="gpt-4o-mini") >= 1
    assert not names(worker) & {*SCRAPE_TIME_SERIES, "llm_metrics_source_up"}
    assert set(SCRAPE_TIME_SERIES) <= names(web)
    # The standard per-process series, on both targets.
    assert "process_cpu_seconds_total" in names(worker)
    assert "process_cpu_seconds_total" in names(web)


@pytest.mark.skipif(TIER != "embedded", reason="the embedded worker: embedded tier")
def test_the_embedded_worker_opens_no_port_of_its_own(metered: Service) -> None:
    """Its counters are in the web process's /metrics (the tests above read them there)."""
    with metered.client(user("inline")) as client:
        generation = create(client, "inline [fake tokens=2]")
        assert wait_terminal(client, generation["id"])["status"] == "completed"
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{WORKER_METRICS_PORT}/metrics", timeout=5)


def test_provider_errors_are_counted_by_kind_including_retried_ones(metered: Service) -> None:
    before = scrape_worker(metered)
    with metered.client(user("unlucky")) as client:
        generation = create(client, f"retried {uuid.uuid4().hex} [fake tokens=3 fail=503x2]")
        final = wait_terminal(client, generation["id"])
    assert final["status"] == "completed"

    # Both failures were counted before the attempt that completed began.
    after = scrape_worker(metered)
    assert (
        value(after, "llm_provider_errors_total", kind="http_5xx")
        - value(before, "llm_provider_errors_total", kind="http_5xx")
        == 2
    )
    assert value(after, "llm_provider_errors_total", kind="http_4xx") == value(
        before, "llm_provider_errors_total", kind="http_4xx"
    )


def test_rate_limit_rejections_are_counted_on_rest_and_websocket(metered: Service) -> None:
    username = user("hasty")
    fresh_rate_window()
    before = scrape(metered)
    with metered.client(username) as client:
        for number in range(RATE_LIMIT_PER_MINUTE):
            create(client, f"hasty {number} [fake tokens=1]")
        refused = client.post("/api/v1/generations", json={"prompt": "one too many"})
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "rate_limited"
    with connect(metered.url("/ws/v1", web=0).replace("http://", "ws://")) as ws:
        ws.send(json.dumps({"type": "auth", "token": make_token(username)}))
        assert decoded_frame(ws.recv(timeout=10))["type"] == "auth.ok"
        ws.send(json.dumps({"type": "generate", "prompt": "and another", "ref": 1}))
        reply = decoded_frame(ws.recv(timeout=10))
    assert (reply["type"], reply["code"]) == ("error", "rate_limited")

    after = scrape(metered)
    assert (
        value(after, "llm_rejections_total", code="rate_limited")
        - value(before, "llm_rejections_total", code="rate_limited")
        == 2
    )
    assert value(after, "llm_rejections_total", code="too_many_active") == value(
        before, "llm_rejections_total", code="too_many_active"
    )


# --- Gauges ------------------------------------------------------------------------------------


def test_open_websockets_gauge_counts_a_connection_until_it_closes(metered: Service) -> None:
    before = value(scrape(metered), "llm_websockets_open")
    with connect(metered.url("/ws/v1").replace("http://", "ws://")) as ws:
        ws.send(json.dumps({"type": "auth", "token": make_token(user("watcher"))}))
        assert decoded_frame(ws.recv(timeout=10))["type"] == "auth.ok"
        assert value(scrape(metered), "llm_websockets_open") == before + 1
    wait_until(lambda: value(scrape(metered), "llm_websockets_open") == before, timeout_s=10)


def test_open_sse_streams_gauge_counts_a_stream_until_the_client_leaves(
    metered: Service,
) -> None:
    before = value(scrape(metered), "llm_sse_streams_open")
    with metered.client(user("reader")) as client:
        generation = create(client, "slow [fake tokens=200 rate=20]")
        with client.stream("GET", f"/api/v1/generations/{generation['id']}/events") as response:
            lines = response.iter_lines()
            assert next(lines).startswith("retry:")
            assert value(scrape(metered), "llm_sse_streams_open") == before + 1
        wait_until(lambda: value(scrape(metered), "llm_sse_streams_open") == before, timeout_s=10)
        client.post(f"/api/v1/generations/{generation['id']}/cancel")


def test_active_generations_and_queue_depth_come_from_the_database_and_the_queue(
    metered: Service,
) -> None:
    with metered.client(user("busy")) as client:
        running = create(client, "long [fake tokens=400 rate=20]")
        wait_until(
            lambda: (
                client.get(f"/api/v1/generations/{running['id']}").json()["status"] == "running"
            ),
            timeout_s=15,
        )
        alone, alone_worker = scrape(metered), scrape_worker(metered)
        assert value(alone, "llm_generations", status="running") == 1
        assert value(alone, "llm_generations", status="queued") == 0
        assert value(alone, "llm_generations_active") == 1
        assert value(alone, "llm_queue_depth") == 0

        # The service's only worker thread is busy: the next one waits in the queue.
        waiting = create(client, "next [fake tokens=1]")
        behind = scrape(metered)
        assert value(behind, "llm_generations", status="queued") == 1
        assert value(behind, "llm_generations_active") == 2
        assert value(behind, "llm_queue_depth") == 1

        client.post(f"/api/v1/generations/{running['id']}/cancel")
        assert wait_terminal(client, waiting["id"])["status"] == "completed"
    after = scrape(metered)
    assert value(after, "llm_generations_active") == 0
    assert value(after, "llm_queue_depth") == 0

    def ended(samples: Samples, status: str, reason: str) -> float:
        name = "llm_generations_finished_total"
        return value(samples, name, status=status, finish_reason=reason)

    # The worker counts each just after it wrote the final row. (At least: the previous
    # test's generation may have been counted after `alone_worker` was read.)
    def both_counted() -> bool:
        now = scrape_worker(metered)
        return ended(now, "cancelled", "cancelled") >= ended(
            alone_worker, "cancelled", "cancelled"
        ) + 1 and (ended(now, "completed", "stop") >= ended(alone_worker, "completed", "stop") + 1)

    wait_until(both_counted, timeout_s=10)


# --- Access ------------------------------------------------------------------------------------


def test_metrics_token_is_required_when_configured(metered: Service) -> None:
    missing = httpx.get(metered.url("/metrics"))
    wrong = httpx.get(metered.url("/metrics"), headers={"Authorization": "Bearer nope"})

    for response in (missing, wrong):
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "unauthorized"
        assert response.headers["www-authenticate"].startswith("Bearer")
    assert (
        "llm_events_published_total"
        in httpx.get(
            metered.url("/metrics"), headers={"Authorization": f"Bearer {METRICS_TOKEN}"}
        ).text
    )


def test_metrics_are_open_like_healthz_without_a_token(service: Service) -> None:
    samples = scrape(service, token=None)

    assert value(samples, "llm_generations_active") >= 0
    assert ("llm_websockets_open", frozenset()) in samples


# --- Recording never breaks a generation ------------------------------------------------------


@pytest.mark.skipif(TIER != "distributed", reason="a worker process: distributed tier")
def test_a_worker_whose_metrics_port_is_taken_still_runs_generations(fake_llm: FakeLLM) -> None:
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        crowded = Service(fake_llm, env={"WORKER_METRICS_PORT": str(port)}).start()
        try:
            with crowded.client(user("crowded")) as client:
                generation = create(client, "crowded [fake tokens=3]")
                assert wait_terminal(client, generation["id"])["status"] == "completed"
            assert f"cannot serve on WORKER_METRICS_PORT={port}" in crowded.logs()
        finally:
            crowded.stop()
