"""Every metric of the service, as ordinary prometheus-client collectors (docs/metrics.md:
which process serves which, and how Prometheus sums them).

The gauges read at scrape time from the source of truth (generations by status from the
database, the Huey queue's length) are the same from any process: only a web process's
``/metrics`` shows them, so that a sum over workers does not count them again. Recording is
an in-memory add under a lock (no I/O), so it cannot fail into a request or a generation.
"""

from __future__ import annotations

import hmac
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
    start_http_server,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder

logger = logging.getLogger(__name__)

# Seconds: from a few hundred ms (a fast provider) to a minute (a queue backlog).
LATENCY_BUCKETS_S = (0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 20.0, 30.0, 60.0)
# Completion tokens per second: hosted models stream at roughly 20-200, local ones slower.
RATE_BUCKETS_TPS = (1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 50.0, 75.0, 100.0, 150.0, 200.0, 300.0, 500.0)

# No `<name>_created` series next to each counter: Prometheus does not need them in the text
# format, and they double the series.
disable_created_metrics()  # type: ignore[no-untyped-call]


def _counter(
    name: str,
    documentation: str,
    labelnames: Sequence[str] = (),
    *,
    initial: Sequence[str | tuple[str, ...]] = (),
) -> Counter:
    counter = Counter(name, documentation, labelnames)
    # Label values shown as 0 before anything happened, so that rate() and alerts work from
    # the first scrape instead of after the first event.
    for values in initial:
        counter.labels(*((values,) if isinstance(values, str) else values))
    return counter


GENERATIONS_FINISHED = _counter(
    "llm_generations_finished",
    "Generations that reached a terminal status, by status and finish_reason.",
    ("status", "finish_reason"),
    initial=(
        ("completed", "stop"),
        ("completed", "length"),
        ("failed", "error"),
        ("cancelled", "cancelled"),
    ),
)
TIME_TO_FIRST_TOKEN = Histogram(
    "llm_time_to_first_token_seconds",
    "From the generation's created_at to its first delta published (the wait a client sees).",
    ("model",),
    buckets=LATENCY_BUCKETS_S,
)
PROVIDER_TIME_TO_FIRST_TOKEN = Histogram(
    "llm_provider_time_to_first_token_seconds",
    "From an attempt's first request to the provider to its first text (retries included).",
    ("model",),
    buckets=LATENCY_BUCKETS_S,
)
TOKENS_PER_SECOND = Histogram(
    "llm_tokens_per_second",
    "Per finished attempt: tokens after the first / seconds from the first token to the last.",
    ("model",),
    buckets=RATE_BUCKETS_TPS,
)
EVENTS_PUBLISHED = _counter(
    "llm_events_published",
    "Events appended to generations' event logs (and sent live), by type.",
    ("type",),
    initial=("delta", "reset", "done"),
)
LIVE_SENDS = _counter(
    "llm_live_sends",
    "Live messages handed to the channel layer, by result (a failed one is repaired from the"
    " replay buffer by its subscribers).",
    ("result",),
    initial=("sent", "failed"),
)
EVENTS_REPAIRED = _counter(
    "llm_events_repaired",
    "Events a subscriber took from the replay buffer to fill a gap in live delivery.",
)
PROVIDER_ERRORS = _counter(
    "llm_provider_errors",
    "Failed provider requests or streams, by kind (each retry counts).",
    ("kind",),
    # `protocol`: a stream the service cannot read (PROTOCOL §8 `provider_protocol`).
    initial=("timeout", "connection", "http_429", "http_5xx", "http_4xx", "dropped", "protocol"),
)
REJECTIONS = _counter(
    "llm_rejections",
    "Requests refused by a limit (REST, SSE and WebSocket), by error code.",
    ("code",),
    initial=(
        "rate_limited",
        "too_many_active",
        "quota_exceeded",
        "too_many_connections",
        "too_many_streams",
    ),
)
WEBSOCKETS_OPEN = Gauge(
    "llm_websockets_open",
    "WebSocket connections open on this process (per process: sum over instances).",
)
SSE_STREAMS_OPEN = Gauge(
    "llm_sse_streams_open",
    "SSE event streams open on this process (per process: sum over instances).",
)


# --- Scrape-time gauges (web processes only) -------------------------------------------------


def _generation_gauges() -> Iterator[Metric]:
    from django.db.models import Count

    from core.models import ACTIVE_STATUSES, Generation

    # Only the non-terminal statuses: a range scan of the (status, heartbeat_at) index over
    # the rows in flight, cheap at any table size. Terminal totals are the counter above; a
    # GROUP BY over every status would scan the whole index (a million rows) on each scrape.
    rows = (
        Generation.objects.filter(status__in=list(ACTIVE_STATUSES))
        .values_list("status")
        .annotate(count=Count("pk"))
        .order_by()
    )
    counts = dict.fromkeys(sorted(status.value for status in ACTIVE_STATUSES), 0) | dict(rows)
    by_status = GaugeMetricFamily(
        "llm_generations",
        "Generations in a non-terminal status now (from the database).",
        labels=["status"],
    )
    for status, count in counts.items():
        by_status.add_metric([status], count)
    yield by_status
    yield GaugeMetricFamily(
        "llm_generations_active",
        "Generations queued or running now (from the database).",
        value=sum(counts.values()),
    )


def _queue_gauge() -> Iterator[Metric]:
    from huey.contrib.djhuey import HUEY

    yield GaugeMetricFamily(
        "llm_queue_depth",
        "Tasks waiting in the Huey queue for a worker thread.",
        value=HUEY.pending_count(),
    )


class WebMetrics:
    """What a web process's /metrics shows: its own collectors, then the scrape-time gauges."""

    def collect(self) -> Iterator[Metric]:
        yield from REGISTRY.collect()
        up = GaugeMetricFamily(
            "llm_metrics_source_up",
            "Whether this scrape could read each source (0: its metrics are missing).",
            labels=["source"],
        )
        sources: dict[str, Callable[[], Iterator[Metric]]] = {
            "database": _generation_gauges,
            "queue": _queue_gauge,
        }
        for source, read in sources.items():
            try:
                families = list(read())
            except Exception:
                # The rest of the scrape is still worth serving; the gap shows in `up`.
                logger.warning("metrics: reading the %s failed", source, exc_info=True)
                up.add_metric([source], 0)
            else:
                yield from families
                up.add_metric([source], 1)
        yield up


WEB_METRICS = WebMetrics()


def metrics_view(request: HttpRequest) -> HttpResponse:
    """The Prometheus text format. Open like /healthz unless METRICS_TOKEN is set."""
    from core.errors import ApiError, error_response

    if request.method not in ("GET", "HEAD"):
        return error_response(ApiError("method_not_allowed", "Use GET.", allow="GET, HEAD"))
    if settings.METRICS_TOKEN:
        given = request.headers.get("Authorization", "")
        expected = f"Bearer {settings.METRICS_TOKEN}"
        if not hmac.compare_digest(given.encode(), expected.encode()):
            return error_response(ApiError("unauthorized", "A valid metrics token is required."))
    # The format the scraper asks for in Accept (Prometheus sends one; OpenMetrics if it
    # prefers), else prometheus_client's latest text format.
    accept = request.headers.get("Accept")
    if not accept:
        return HttpResponse(generate_latest(WEB_METRICS), content_type=CONTENT_TYPE_LATEST)
    encode, content_type = choose_encoder(accept)
    return HttpResponse(encode(WEB_METRICS), content_type=content_type)


# --- The worker's own endpoint ---------------------------------------------------------------

_serving_lock = threading.Lock()
_serving = False


def serve_worker_metrics() -> None:
    """A run_huey process: its collectors over HTTP on WORKER_METRICS_PORT (0: not served).

    Called from every worker thread's start-up hook: the first one starts the server.
    """
    global _serving
    port = settings.WORKER_METRICS_PORT
    with _serving_lock:
        if _serving or not port:
            return
        _serving = True
    try:
        start_http_server(port)
    except OSError:
        # A port taken (two workers on one host given the same one) costs this process its
        # metrics, not its generations.
        logger.error("metrics: cannot serve on WORKER_METRICS_PORT=%s", port, exc_info=True)
        return
    logger.info("metrics: serving this worker's metrics on port %s", port)


class AttemptTimer:
    """The worker's clock for one attempt of one generation (jobs.engine.Attempt)."""

    def __init__(
        self, *, model: str, created_at: datetime | None, first_text_of_generation: bool
    ) -> None:
        self._model = model
        self._created_at = created_at
        # Only an attempt that starts from nothing published (normally the first) shows a
        # client its first text: a later attempt's would count the same wait twice.
        self._ttft_pending = first_text_of_generation and created_at is not None
        self._provider_started_at = time.monotonic()
        self._first_text_at: float | None = None
        self._last_text_at = 0.0
        self._texts = 0

    def provider_started(self) -> None:
        self._provider_started_at = time.monotonic()

    def text(self) -> None:
        """A chunk with text arrived from the provider."""
        now = time.monotonic()
        self._texts += 1
        self._last_text_at = now
        if self._first_text_at is None:
            self._first_text_at = now
            waited_s = now - self._provider_started_at
            PROVIDER_TIME_TO_FIRST_TOKEN.labels(model=self._model).observe(waited_s)

    def delta_published(self) -> None:
        if self._ttft_pending and self._created_at is not None:
            self._ttft_pending = False
            waited_s = time.time() - self._created_at.timestamp()
            # created_at comes from the web host's clock: skew between hosts shows here.
            TIME_TO_FIRST_TOKEN.labels(model=self._model).observe(max(0.0, waited_s))

    def finished(self, *, status: str, finish_reason: str) -> None:
        """The final row is written."""
        GENERATIONS_FINISHED.labels(status=status, finish_reason=finish_reason).inc()
        if self._first_text_at is not None and self._texts >= 2:
            streaming_s = self._last_text_at - self._first_text_at
            if streaming_s > 0:
                rate_tps = (self._texts - 1) / streaming_s
                TOKENS_PER_SECOND.labels(model=self._model).observe(rate_tps)
