"""GET /metrics: every metric of the service is defined here (name, type, help, labels,
buckets), recorded through here, and exported from here. docs/metrics.md lists them.

Three kinds of metric, because the processes that see an event are not the ones scraped:

- Fleet-wide counters and histograms (``FleetCounter``, ``FleetHistogram``). Most happen in
  Huey workers, which serve no HTTP, possibly on other hosts. Each process adds to a local
  table of pending increments (a dict update under a lock: no I/O on the recording path) and
  a background thread adds the table to one shared store every FLUSH_INTERVAL_S: a Redis
  hash (HINCRBYFLOAT in one MULTI/EXEC pipeline) in the distributed mode, this process's
  memory in the embedded default. At scrape time a collector reads the whole store, so every
  Daphne process shows the fleet's totals. (prometheus_client's multiprocess mode shares
  files, hence one host only.)
- Gauges read at scrape time from the source of truth: generations queued and running (an
  index range scan on gen_status_heartbeat), the Huey queue's length.
- Per-process gauges (open WebSockets, open SSE streams) in this process's registry:
  Prometheus scrapes each Daphne process and sums them.

Recording never raises into a request or a generation: a store that cannot be reached keeps
the increments here and retries at the next flush (logged once per outage, and counted).
"""

from __future__ import annotations

import atexit
import hmac
import logging
import os
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from functools import cache
from typing import cast

import redis
from django.conf import settings
from django.http import HttpRequest, HttpResponse
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import choose_encoder

logger = logging.getLogger(__name__)

# Worker-side increments reach /metrics at most this late; one pipelined round trip per
# process per interval, however many events (publish_event runs ~25 times/s per generation).
FLUSH_INTERVAL_S = 1.0
# One hash holds the whole fleet's counters: a few hundred fields (metrics x label values x
# buckets), read with one HGETALL per scrape.
REDIS_KEY = "llm:metrics:v1"
# Separates the parts of a hash field: metric name, sample part, label values.
_SEP = "\x1f"

# Seconds: from a few hundred ms (a fast provider) to a minute (a queue backlog).
LATENCY_BUCKETS_S = (0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 20.0, 30.0, 60.0)
# Completion tokens per second: hosted models stream at roughly 20-200, local ones slower.
RATE_BUCKETS_TPS = (1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 50.0, 75.0, 100.0, 150.0, 200.0, 300.0, 500.0)


# --- Fleet-wide counters and histograms ------------------------------------------------------


class FleetMetric:
    kind = ""

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str] = (),
        *,
        initial: Sequence[Sequence[str]] = (),
    ) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        # Label values shown as 0 before anything happened, so that rate() and alerts work
        # from the first scrape instead of after the first event.
        self.initial = [tuple(values) for values in initial]
        _FLEET.append(self)

    def _values(self, labels: dict[str, str]) -> tuple[str, ...]:
        return tuple(str(labels.get(name, "")).replace(_SEP, "_") for name in self.labelnames)


class FleetCounter(FleetMetric):
    kind = "counter"

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        try:
            recorder().add(_SEP.join((self.name, "total", *self._values(labels))), amount)
        except Exception:
            logger.warning("metrics: recording %s failed", self.name, exc_info=True)


class FleetHistogram(FleetMetric):
    kind = "histogram"

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str] = (),
        *,
        buckets: Sequence[float],
    ) -> None:
        super().__init__(name, documentation, labelnames)
        self.buckets = tuple(buckets)

    def observe(self, value: float, **labels: str) -> None:
        try:
            index = next(
                (i for i, bound in enumerate(self.buckets) if value <= bound), len(self.buckets)
            )
            values = self._values(labels)
            # Non-cumulative bucket counts (one field per observation), made cumulative at
            # scrape time; the count is their total.
            recorder().add(_SEP.join((self.name, f"b{index}", *values)), 1.0)
            recorder().add(_SEP.join((self.name, "sum", *values)), value)
        except Exception:
            logger.warning("metrics: recording %s failed", self.name, exc_info=True)


_FLEET: list[FleetMetric] = []

GENERATIONS_FINISHED = FleetCounter(
    "llm_generations_finished",
    "Generations that reached a terminal status, by status and finish_reason.",
    ("status", "finish_reason"),
    initial=[
        ("completed", "stop"),
        ("completed", "length"),
        ("failed", "error"),
        ("cancelled", "cancelled"),
    ],
)
TIME_TO_FIRST_TOKEN = FleetHistogram(
    "llm_time_to_first_token_seconds",
    "From the generation's created_at to its first delta published (the wait a client sees).",
    ("model",),
    buckets=LATENCY_BUCKETS_S,
)
PROVIDER_TIME_TO_FIRST_TOKEN = FleetHistogram(
    "llm_provider_time_to_first_token_seconds",
    "From an attempt's first request to the provider to its first text (retries included).",
    ("model",),
    buckets=LATENCY_BUCKETS_S,
)
TOKENS_PER_SECOND = FleetHistogram(
    "llm_tokens_per_second",
    "Per finished attempt: tokens after the first / seconds from the first token to the last.",
    ("model",),
    buckets=RATE_BUCKETS_TPS,
)
EVENTS_PUBLISHED = FleetCounter(
    "llm_events_published",
    "Events appended to generations' event logs (and sent live), by type.",
    ("type",),
    initial=[("delta",), ("reset",), ("done",)],
)
EVENTS_REPAIRED = FleetCounter(
    "llm_events_repaired",
    "Events a subscriber took from the replay buffer to fill a gap in live delivery.",
)
PROVIDER_ERRORS = FleetCounter(
    "llm_provider_errors",
    "Failed provider requests or streams, by kind (each retry counts).",
    ("kind",),
    initial=[
        ("timeout",),
        ("connection",),
        ("http_429",),
        ("http_5xx",),
        ("http_4xx",),
        ("dropped",),
        # A stream the service cannot read (PROTOCOL §8 `provider_protocol`).
        ("protocol",),
    ],
)
REJECTIONS = FleetCounter(
    "llm_rejections",
    "Requests refused by a limit (REST and WebSocket), by error code.",
    ("code",),
    initial=[
        ("rate_limited",),
        ("too_many_active",),
        ("quota_exceeded",),
        ("too_many_connections",),
    ],
)


# --- Per-process metrics ---------------------------------------------------------------------

# No `<name>_created` series next to each counter: Prometheus does not need them in the text
# format, and they double the series of this process's own counters.
disable_created_metrics()  # type: ignore[no-untyped-call]
REGISTRY = CollectorRegistry()
for _collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
    REGISTRY.register(_collector)

WEBSOCKETS_OPEN = Gauge(
    "llm_websockets_open",
    "WebSocket connections open on this process (per process: sum over instances).",
    registry=REGISTRY,
)
SSE_STREAMS_OPEN = Gauge(
    "llm_sse_streams_open",
    "SSE event streams open on this process (per process: sum over instances).",
    registry=REGISTRY,
)
FLUSH_FAILURES = Counter(
    "llm_metrics_flush_failures",
    "Flushes of this process's increments to the shared store that failed (then retried).",
    registry=REGISTRY,
)


# --- The store and the flushing thread -------------------------------------------------------


class MemoryStore:
    """The embedded default: one process records and serves everything."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._totals: dict[str, float] = defaultdict(float)

    def add(self, batch: dict[str, float]) -> None:
        with self._lock:
            for field, amount in batch.items():
                self._totals[field] += amount

    def read(self) -> dict[str, float]:
        with self._lock:
            return dict(self._totals)


class RedisStore:
    """The distributed mode: one hash in Redis, shared by every web and worker process."""

    def __init__(self, client: redis.Redis | None = None) -> None:
        self._client = client

    def client(self) -> redis.Redis:
        from realtime.redis import sync_client

        return self._client or sync_client()

    def add(self, batch: dict[str, float]) -> None:
        # MULTI/EXEC: a failed flush adds nothing, so retrying it cannot count twice (except
        # when the connection drops after EXEC ran and before its reply: a rare overcount).
        pipe = self.client().pipeline(transaction=True)
        for field, amount in batch.items():
            pipe.hincrbyfloat(REDIS_KEY, field, amount)
        pipe.execute()

    def read(self) -> dict[str, float]:
        raw = cast(dict[bytes, bytes], self.client().hgetall(REDIS_KEY))
        return {key.decode(): float(value) for key, value in raw.items()}


@cache
def store() -> MemoryStore | RedisStore:
    return RedisStore() if settings.DISTRIBUTED else MemoryStore()


class Recorder:
    """This process's pending increments, flushed to the store by a daemon thread."""

    def __init__(
        self,
        target: Callable[[], MemoryStore | RedisStore] | None = None,
        *,
        flush_in_background: bool = True,
    ) -> None:
        self._target = target or store
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._pending: dict[str, float] = defaultdict(float)
        # None: start the flushing thread on the first increment (in this process: a fork
        # does not inherit threads).
        self._thread_pid: int | None = None if flush_in_background else -1
        self._failing = False

    def add(self, field: str, amount: float) -> None:
        with self._lock:
            self._pending[field] += amount
            start = self._thread_pid not in (-1, os.getpid())
            if start:
                self._thread_pid = os.getpid()
        if start:
            threading.Thread(target=self._loop, name="metrics-flush", daemon=True).start()
            atexit.register(self.flush)

    def _loop(self) -> None:
        while True:
            time.sleep(FLUSH_INTERVAL_S)
            self.flush()

    def flush(self) -> bool:
        with self._flush_lock:
            with self._lock:
                batch, self._pending = self._pending, defaultdict(float)
            if not batch:
                return True
            try:
                self._target().add(dict(batch))
            except Exception:
                # Keep them for the next flush: the table is bounded by the label values, so
                # an outage costs no memory growth, only delay.
                with self._lock:
                    for field, amount in batch.items():
                        self._pending[field] += amount
                FLUSH_FAILURES.inc()
                if not self._failing:
                    self._failing = True
                    logger.warning("metrics: flush to the store failed; will retry", exc_info=True)
                return False
            if self._failing:
                self._failing = False
                logger.warning("metrics: flush to the store works again")
            return True


@cache
def recorder() -> Recorder:
    return Recorder()


# --- Export ----------------------------------------------------------------------------------


def _fleet_families(totals: dict[str, float]) -> Iterator[Metric]:
    by_name: dict[str, dict[str, float]] = defaultdict(dict)
    for field, value in totals.items():
        name, _, rest = field.partition(_SEP)
        by_name[name][rest] = value
    for metric in _FLEET:
        fields = by_name.get(metric.name, {})
        if isinstance(metric, FleetHistogram):
            yield _histogram_family(metric, fields)
        else:
            yield _counter_family(metric, fields)


def _split(rest: str) -> tuple[str, tuple[str, ...]]:
    part, *values = rest.split(_SEP)
    return part, tuple(values)


def _counter_family(metric: FleetMetric, fields: dict[str, float]) -> Metric:
    family = CounterMetricFamily(metric.name, metric.documentation, labels=metric.labelnames)
    samples: dict[tuple[str, ...], float] = dict.fromkeys(metric.initial, 0.0)
    for rest, value in fields.items():
        part, values = _split(rest)
        if part == "total" and len(values) == len(metric.labelnames):
            samples[values] = samples.get(values, 0.0) + value
    if not metric.labelnames and not samples:
        samples[()] = 0.0
    for values, value in sorted(samples.items()):
        family.add_metric(list(values), value)
    return family


def _histogram_family(metric: FleetHistogram, fields: dict[str, float]) -> Metric:
    family = HistogramMetricFamily(metric.name, metric.documentation, labels=metric.labelnames)
    counts: dict[tuple[str, ...], list[float]] = {}
    sums: dict[tuple[str, ...], float] = {}
    for rest, value in fields.items():
        part, values = _split(rest)
        if len(values) != len(metric.labelnames):
            continue
        if part == "sum":
            sums[values] = value
        elif part.startswith("b") and part[1:].isdigit() and int(part[1:]) <= len(metric.buckets):
            counts.setdefault(values, [0.0] * (len(metric.buckets) + 1))[int(part[1:])] = value
    for values in sorted(counts):
        cumulative = 0.0
        buckets: list[tuple[str, float]] = []
        bounds = [*metric.buckets, float("inf")]
        for bound, count in zip(bounds, counts[values], strict=True):
            cumulative += count
            buckets.append((_bound_text(bound), cumulative))
        family.add_metric(list(values), buckets, sums.get(values, 0.0))
    return family


def _bound_text(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(float(bound))


ACTIVE_STATUSES = ("queued", "running")


def _generation_gauges() -> Iterator[Metric]:
    from django.db.models import Count

    from api.models import Generation

    # Only the non-terminal statuses: a range scan of the (status, heartbeat_at) index over
    # the rows in flight, cheap at any table size. Terminal totals are the counter above; a
    # GROUP BY over every status would scan the whole index (a million rows) on each scrape.
    rows = (
        Generation.objects.filter(status__in=ACTIVE_STATUSES)
        .values_list("status")
        .annotate(count=Count("pk"))
        .order_by()
    )
    counts = dict.fromkeys(ACTIVE_STATUSES, 0)
    for status, count in rows:
        counts[status] = count
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


def _queue_gauge() -> Metric:
    from huey.contrib.djhuey import HUEY

    return GaugeMetricFamily(
        "llm_queue_depth",
        "Tasks waiting in the Huey queue for a worker thread.",
        value=HUEY.pending_count(),
    )


class ScrapeCollector:
    """Everything not held by this process's registry, read at scrape time."""

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily(
            "llm_metrics_source_up",
            "Whether this scrape could read each source (0: its metrics are missing).",
            labels=["source"],
        )
        recorder().flush()  # this process's own increments, so a scrape sees them at once
        try:
            totals = store().read()
        except Exception:
            logger.warning("metrics: reading the store failed", exc_info=True)
            up.add_metric(["store"], 0)
        else:
            yield from _fleet_families(totals)
            up.add_metric(["store"], 1)
        try:
            families = list(_generation_gauges())
        except Exception:
            logger.warning("metrics: reading the database failed", exc_info=True)
            up.add_metric(["database"], 0)
        else:
            yield from families
            up.add_metric(["database"], 1)
        try:
            queue = _queue_gauge()
        except Exception:
            logger.warning("metrics: reading the queue failed", exc_info=True)
            up.add_metric(["queue"], 0)
        else:
            yield queue
            up.add_metric(["queue"], 1)
        yield up


REGISTRY.register(ScrapeCollector())


def metrics_view(request: HttpRequest) -> HttpResponse:
    """The Prometheus text format. Open like /healthz unless METRICS_TOKEN is set."""
    from api.errors import ApiError, error_response

    if request.method not in ("GET", "HEAD"):
        refused = error_response(ApiError("method_not_allowed", "Use GET."))
        refused["Allow"] = "GET, HEAD"
        return refused
    if settings.METRICS_TOKEN:
        given = request.headers.get("Authorization", "")
        expected = f"Bearer {settings.METRICS_TOKEN}"
        if not hmac.compare_digest(given.encode(), expected.encode()):
            return error_response(ApiError("unauthorized", "A valid metrics token is required."))
    # The format the scraper asks for in Accept (Prometheus sends one; OpenMetrics if it
    # prefers), else prometheus_client's latest text format.
    accept = request.headers.get("Accept")
    if not accept:
        return HttpResponse(generate_latest(REGISTRY), content_type=CONTENT_TYPE_LATEST)
    encode, content_type = choose_encoder(accept)
    return HttpResponse(encode(REGISTRY), content_type=content_type)


class AttemptTimer:
    """The worker's clock for one attempt of one generation (jobs.runner.Runner)."""

    def __init__(
        self,
        *,
        model: str,
        created_at: datetime | None,
        first_text_of_generation: bool,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._model = model
        self._created_at = created_at
        # Only an attempt that starts from nothing published (normally the first) shows a
        # client its first text: a later attempt's would count the same wait twice.
        self._ttft_pending = first_text_of_generation and created_at is not None
        self._clock = clock
        self._provider_started_at = clock()
        self._first_text_at: float | None = None
        self._last_text_at = 0.0
        self._texts = 0

    def provider_started(self) -> None:
        self._provider_started_at = self._clock()

    def text(self) -> None:
        """A chunk with text arrived from the provider."""
        now = self._clock()
        self._texts += 1
        self._last_text_at = now
        if self._first_text_at is None:
            self._first_text_at = now
            PROVIDER_TIME_TO_FIRST_TOKEN.observe(now - self._provider_started_at, model=self._model)

    def delta_published(self) -> None:
        if self._ttft_pending and self._created_at is not None:
            self._ttft_pending = False
            waited_s = time.time() - self._created_at.timestamp()
            # created_at comes from the web host's clock: skew between hosts shows here.
            TIME_TO_FIRST_TOKEN.observe(max(0.0, waited_s), model=self._model)

    def finished(self, *, status: str, finish_reason: str) -> None:
        """The final row is written."""
        GENERATIONS_FINISHED.inc(status=status, finish_reason=finish_reason)
        if self._first_text_at is not None and self._texts >= 2:
            streaming_s = self._last_text_at - self._first_text_at
            if streaming_s > 0:
                TOKENS_PER_SECOND.observe((self._texts - 1) / streaming_s, model=self._model)
