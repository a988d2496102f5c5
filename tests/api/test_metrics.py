"""GET /metrics (docs/metrics.md): what the fleet did shows on every web process's scrape.

Black-box: real Daphne and worker processes on the run's tier, scraped over HTTP and parsed
with prometheus_client's own parser. Each test reads the metrics before and after what it
does, so that it holds whatever ran before it on the same service.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from websockets.sync.client import connect

from project.metrics import FLUSH_FAILURES, FLUSH_INTERVAL_S, MemoryStore, Recorder, RedisStore
from tests.conftest import create, wait_terminal
from tests.harness import FakeLLM, Service, make_token, stream_events, wait_until
from tests.tier_env import TIER, free_port
from tests.wire import decoded_frame

METRICS_TOKEN = "metrics-token-0123456789"
RATE_LIMIT_PER_MINUTE = 3
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture(scope="module")
def metered(fake_llm: FakeLLM) -> Iterator[Service]:
    """A service whose /metrics needs a token, with a low rate limit (each test uses its own
    users) and one worker thread, so that a second generation waits in the queue."""
    instance = Service(
        fake_llm,
        env={
            "METRICS_TOKEN": METRICS_TOKEN,
            "RATE_LIMIT_PER_MINUTE": str(RATE_LIMIT_PER_MINUTE),
            "HUEY_WORKERS": "1",
        },
    ).start()
    yield instance
    instance.stop()


def scrape(service: Service, *, web: int = 0, token: str | None = METRICS_TOKEN) -> Samples:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    response = httpx.get(service.url("/metrics", web=web), headers=headers, timeout=30)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=")
    samples: Samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sample's value; absent (never recorded) counts as 0 only where asked for."""
    return samples[(name, frozenset(labels.items()))]


def value_or_zero(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def user(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


# --- What a generation leaves behind -----------------------------------------------------------


def test_a_streamed_generation_shows_in_the_counters_and_histograms(metered: Service) -> None:
    before = scrape(metered)
    model = "gpt-4o-mini"
    with metered.client(user("streamer")) as client:
        generation = create(client, "metered [fake tokens=60 rate=60 ttft=150]")
        status, frames, _ = stream_events(client, generation["id"])
    assert status == 200
    kinds = [frame["data"]["type"] for frame in frames]
    assert kinds[-1] == "done"

    def finished() -> Samples | None:
        now = scrape(metered)
        done = value(now, "llm_events_published_total", type="done")
        return now if done > value(before, "llm_events_published_total", type="done") else None

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
    assert value(after, "llm_generations_active") == 0
    assert value(after, "llm_metrics_source_up", source="store") == 1
    assert value(after, "llm_metrics_source_up", source="database") == 1
    assert value(after, "llm_metrics_source_up", source="queue") == 1


def test_provider_errors_are_counted_by_kind_including_retried_ones(metered: Service) -> None:
    before = scrape(metered)
    with metered.client(user("unlucky")) as client:
        generation = create(client, f"retried {uuid.uuid4().hex} [fake tokens=3 fail=503x2]")
        final = wait_terminal(client, generation["id"])
    assert final["status"] == "completed"

    def errors(samples: Samples) -> float:
        return value(samples, "llm_provider_errors_total", kind="http_5xx")

    # The two failures may reach the store in two flushes: wait for both, then for a moment
    # more, so that a third (a miscount) would show too.
    wait_until(lambda: errors(scrape(metered)) - errors(before) >= 2, timeout_s=15)
    time.sleep(FLUSH_INTERVAL_S * 1.5)
    after = scrape(metered)
    assert errors(after) - errors(before) == 2
    assert value(after, "llm_provider_errors_total", kind="http_4xx") == value(
        before, "llm_provider_errors_total", kind="http_4xx"
    )


def test_rate_limit_rejections_are_counted_on_rest_and_websocket(metered: Service) -> None:
    username = user("hasty")
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
        alone = scrape(metered)
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

    # The worker's counts reach the store within a flush interval. (At least: the previous
    # test's cancel may have been flushed after `alone` was read.)
    def both_counted() -> bool:
        now = scrape(metered)
        return ended(now, "cancelled", "cancelled") >= ended(
            alone, "cancelled", "cancelled"
        ) + 1 and (ended(now, "completed", "stop") >= ended(alone, "completed", "stop") + 1)

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


# --- Several processes -------------------------------------------------------------------------


@pytest.mark.skipif(TIER != "distributed", reason="several web processes: distributed tier")
def test_every_web_process_shows_what_the_worker_did(fake_llm: FakeLLM) -> None:
    cluster = Service(fake_llm, webs=2, workers=1).start()
    try:
        before = [scrape(cluster, web=web, token=None) for web in (0, 1)]
        with cluster.client(user("fleet"), web=0) as client:
            generation = create(client, "fleet [fake tokens=20 ttft=50]")
            assert wait_terminal(client, generation["id"])["status"] == "completed"

        def shows_it(web: int) -> Samples | None:
            now = scrape(cluster, web=web, token=None)
            # `done` is the worker's last count for a generation: the others were flushed with
            # it or before it.
            key = ("llm_events_published_total", frozenset({("type", "done")}))
            return now if now[key] > before[web][key] else None

        for web in (0, 1):
            samples: Samples = wait_until(lambda w=web: shows_it(w), timeout_s=15, interval_s=0.2)
            # Web 1 took no part: the worker's counts reached it through the shared store.
            assert value(samples, "llm_events_published_total", type="done") == 1
            assert value(samples, "llm_time_to_first_token_seconds_count", model="gpt-4o-mini") == 1
            assert (
                value(
                    samples, "llm_provider_time_to_first_token_seconds_count", model="gpt-4o-mini"
                )
                == 1
            )
            assert value(samples, "llm_tokens_per_second_count", model="gpt-4o-mini") == 1
            assert (
                value(
                    samples,
                    "llm_generations_finished_total",
                    status="completed",
                    finish_reason="stop",
                )
                == 1
            )
    finally:
        cluster.stop()


# --- Recording never breaks the request path ---------------------------------------------------


def flush_failures() -> float:
    (family,) = FLUSH_FAILURES.collect()
    return next(s.value for s in family.samples if s.name == "llm_metrics_flush_failures_total")


def test_an_unreachable_store_delays_increments_without_raising_or_losing_them() -> None:
    import redis

    nowhere = redis.Redis(port=free_port(), socket_connect_timeout=0.5, socket_timeout=0.5)
    stores: list[MemoryStore | RedisStore] = [RedisStore(nowhere)]
    recorder = Recorder(lambda: stores[0], flush_in_background=False)
    failures_before = flush_failures()

    recorder.add("llm_events_published\x1ftotal\x1fdelta", 3)
    assert recorder.flush() is False  # Redis refused the connection; nothing raised
    recorder.add("llm_events_published\x1ftotal\x1fdelta", 2)
    assert flush_failures() == failures_before + 1

    stores[0] = MemoryStore()  # the store is back
    assert recorder.flush() is True
    assert stores[0].read() == {"llm_events_published\x1ftotal\x1fdelta": 5}
    assert recorder.flush() is True
    assert stores[0].read() == {"llm_events_published\x1ftotal\x1fdelta": 5}
