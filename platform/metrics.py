"""Prometheus metrics: every family Celeriac exports, and how each process serves them.

The names are an interface (dashboards, alerts and KEDA read them; ``helm/`` and
``tests/platform/test_metrics_names.py`` check that nothing else is referenced). No label
takes a tenant id, a job id or a URL: per-tenant numbers come from the bounded views in
``celeriac.platform.ops.tenant_metrics``.

Multiprocess mode (docs/adr/0013-observability.md): prometheus-client decides at import
time, from ``PROMETHEUS_MULTIPROC_DIR``, whether values live in memory or in per-process
files. ``celeriac api|worker|beat`` set that variable (to a directory of the component's own,
wiped first, :mod:`celeriac.platform.metrics_dir`, which does not import this module)
before anything imports prometheus-client, so uvicorn's ``--workers`` children and
Celery's prefork children write files that the process serving ``/metrics`` adds up.
Without the variable (tests that build the app in-process) the values are in memory and
the default registry serves them.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from celery import signals
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
    start_http_server,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from celeriac.platform.metrics_dir import MULTIPROC_ENV
from celeriac.platform.queues import BANDS, Pool, TenantQueue

if TYPE_CHECKING:
    from celeriac.platform.dispatch import FairDispatcher
    from celeriac.platform.models import Job

# Every published task carries its publish time in this header (set in
# celeriac.platform.observability); a queue's oldest message tells its age.
PUBLISHED_HEADER = "celeriac_published"
CONTENT_TYPE = CONTENT_TYPE_LATEST

# Seconds; a small job takes well under one, a big one minutes.
_JOB_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)
_TASK_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 60.0, 300.0)
_HTTP_BUCKETS = (0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)

HTTP_REQUESTS = Counter(
    "celeriac_http_requests", "API requests answered.", ["route", "method", "status_class"]
)
HTTP_DURATION = Histogram(
    "celeriac_http_request_duration_seconds",
    "API request handling time, first byte in to last byte out.",
    ["route", "method", "status_class"],
    buckets=_HTTP_BUCKETS,
)
JOBS_SUBMITTED = Counter("celeriac_jobs_submitted", "Jobs accepted (202).", ["band"])
JOBS_FINISHED = Counter(
    "celeriac_jobs_finished", "Jobs that reached a final state.", ["state", "band"]
)
JOB_DURATION = Histogram(
    "celeriac_job_duration_seconds",
    "Submission to final state.",
    ["band"],
    buckets=_JOB_BUCKETS,
)
JOB_QUEUE_WAIT = Histogram(
    "celeriac_job_queue_wait_seconds",
    "Submission to the first compute start (the first of the job's compute tasks claimed).",
    ["band"],
    buckets=_JOB_BUCKETS,
)
TASKS = Counter(
    "celeriac_tasks",
    "Celery task executions by outcome (succeeded, retried, failed, timed_out, revoked).",
    ["task", "pool", "outcome"],
)
TASK_DURATION = Histogram(
    "celeriac_task_duration_seconds",
    "Celery task run time (prerun to postrun).",
    ["task", "pool", "plugin"],
    buckets=_TASK_BUCKETS,
)
WEBHOOK_ATTEMPTS = Counter(
    "celeriac_webhook_attempts",
    "Webhook delivery attempts by outcome class (2xx, 3xx, 4xx, 5xx, timeout, network, refused).",
    ["outcome"],
)
WEBHOOK_DELIVERY = Histogram(
    "celeriac_webhook_delivery_seconds",
    "Event written to its first 2xx answer (retries included).",
    buckets=(0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 60.0, 600.0, 3600.0, 86400.0),
)
QUOTA_REJECTIONS = Counter(
    "celeriac_quota_rejections", "Requests refused by a quota or limit.", ["policy"]
)
USAGE_RECORDS = Counter("celeriac_usage_records", "Usage records written.", ["metric"])
KMS_CALLS = Counter("celeriac_kms_calls", "Calls to AWS KMS.", ["operation"])
CACHE_REQUESTS = Counter(
    "celeriac_cache_requests", "Shared cache look-ups (Redis cache-aside).", ["result"]
)

# Families a scrape of beat adds (BacklogCollector) and of a worker (WorkerSlotsCollector);
# listed here so that the check of dashboards and alerts knows them.
COLLECTED_FAMILIES = (
    "celeriac_queue_backlog",
    "celeriac_queue_oldest_age_seconds",
    "celeriac_queue_ready",
    "celeriac_queue_running",
    "celeriac_worker_slots",
)


@signals.before_task_publish.connect
def _stamp_published(headers: dict[str, Any] | None = None, **_: Any) -> None:
    # The publish time travels with the message: a queue's oldest message tells its age
    # (oldest_age below). Connected wherever tasks are published (API and workers).
    if headers is not None:
        headers.setdefault(PUBLISHED_HEADER, time.time())


def status_class(status: int) -> str:
    return f"{status // 100}xx"


class _Children:
    """A family's children by label values, looked up once each: ``labels()`` takes the
    family's lock and builds a key from its arguments on every call, which the request
    and task paths paid twice each (the label sets are bounded, see the module's note)."""

    def __init__(self, family: Any) -> None:
        self.family = family
        self.found: dict[tuple[str, ...], Any] = {}

    def __call__(self, *values: str) -> Any:
        child = self.found.get(values)
        if child is None:
            child = self.found[values] = self.family.labels(*values)
        return child


_http_requests = _Children(HTTP_REQUESTS)
_http_duration = _Children(HTTP_DURATION)
_tasks = _Children(TASKS)
_task_duration = _Children(TASK_DURATION)


_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def http_request_ended(route: str, method: str, status: int, seconds: float) -> None:
    """One API request answered (by route template, method and status class). A method
    outside HTTP's usual ones is ``other``: the client chooses it, so it must not make
    series (nor children here)."""
    values = (route, method if method in _METHODS else "other", status_class(status))
    _http_requests(*values).inc()
    _http_duration(*values).observe(seconds)


# --- lifecycle effects (called from the one place where each transition happens) --------


def job_submitted(band: str, count: int = 1) -> None:
    """A job was accepted (the API's ingest path, after the commit)."""
    JOBS_SUBMITTED.labels(band=band).inc(count)


def seconds_between(start: datetime, end: datetime) -> float:
    """``end - start`` in seconds, never negative; naive times are UTC (SQLite)."""
    if start.tzinfo is None:
        start = start.replace(tzinfo=UTC)
    if end.tzinfo is None:
        end = end.replace(tzinfo=UTC)
    return max(0.0, (end - start).total_seconds())


def job_finished(state: str, band: str, submitted_at: datetime, finished_at: datetime) -> None:
    """A job reached ``state`` (succeeded, partial, failed, cancelled)."""
    JOBS_FINISHED.labels(state=state, band=band).inc()
    JOB_DURATION.labels(band=band).observe(seconds_between(submitted_at, finished_at))


def job_compute_started(band: str, submitted_at: datetime, started_at: datetime) -> None:
    """The first of the job's compute tasks was claimed: its queue wait ends
    (``celeriac.platform.jobs.lifecycle.compute_started`` calls this once per job)."""
    JOB_QUEUE_WAIT.labels(band=band).observe(seconds_between(submitted_at, started_at))


_FINAL = frozenset({"succeeded", "partial", "failed", "cancelled"})


def job_transitioned(job: Job, after: str) -> None:
    """A job's transition (``celeriac.platform.jobs.lifecycle._transition`` calls this for
    each): a final state counts it finished."""
    if after in _FINAL:
        job_finished(after, job.priority.value, job.created_at, job.finished_at or _now())


def _now() -> datetime:
    return datetime.now(UTC)


def task_ended(task: str, pool: str, outcome: str, seconds: float | None, plugin: str) -> None:
    _tasks(task, pool, outcome).inc()
    if seconds is not None:
        _task_duration(task, pool, plugin).observe(seconds)


def webhook_attempted(outcome: str) -> None:
    WEBHOOK_ATTEMPTS.labels(outcome=outcome).inc()


def webhook_delivered(seconds: float) -> None:
    WEBHOOK_DELIVERY.observe(max(0.0, seconds))


def quota_rejected(policy: str) -> None:
    QUOTA_REJECTIONS.labels(policy=policy).inc()


def usage_recorded(rows: Iterable[str]) -> None:
    """One count per usage row written, by its metric."""
    for metric in rows:
        USAGE_RECORDS.labels(metric=metric).inc()


def kms_called(operation: str) -> None:
    KMS_CALLS.labels(operation=operation).inc()


def cache_looked_up(hit: bool) -> None:
    CACHE_REQUESTS.labels(result="hit" if hit else "miss").inc()


# --- exposition --------------------------------------------------------------------------


def multiprocess_mode() -> bool:
    return MULTIPROC_ENV in os.environ


def registry(*extra: Collector) -> CollectorRegistry:
    """What a scrape of this process answers: every process's files in multiprocess mode,
    or this process's own values, plus ``extra`` collectors computed at scrape time."""
    if multiprocess_mode():
        built = CollectorRegistry()
        multiprocess.MultiProcessCollector(built)  # type: ignore[no-untyped-call]
    elif not extra:
        return REGISTRY
    else:
        built = CollectorRegistry()
        built.register(_Forward(REGISTRY))
    for collector in extra:
        built.register(collector)
    return built


class _Forward(Collector):
    def __init__(self, source: CollectorRegistry) -> None:
        self.source = source

    def collect(self) -> Iterator[Any]:
        yield from self.source.collect()


def render(*extra: Collector) -> bytes:
    """Prometheus text for a scrape of this process."""
    return generate_latest(registry(*extra))


def process_exited(pid: int | None = None) -> None:
    """Drop a finished process's live gauges (prometheus-client's ``mark_process_dead``)."""
    if multiprocess_mode():
        multiprocess.mark_process_dead(pid or os.getpid())  # type: ignore[no-untyped-call]


_server_lock = threading.Lock()
_servers: dict[int, Any] = {}


def serve(port: int, host: str, *extra: Collector) -> None:
    """Serve ``/metrics`` on ``port`` from a thread of this process (workers, beat);
    idempotent per port."""
    with _server_lock:
        if port in _servers:
            return
        server, _thread = start_http_server(port, addr=host, registry=registry(*extra))
        _servers[port] = server


# --- collectors computed at scrape time ---------------------------------------------------


class BacklogCollector(Collector):
    """Backlog per pool and band from the fair dispatcher's backlog read (beat serves it).

    ``read`` returns ``(pool, band, messages, oldest_age_seconds | None)`` rows plus the
    ready and running counts per pool; the dispatcher is read through its public methods
    only, see :func:`celeriac.platform.ops.tenant_metrics.backlog_rows`.
    """

    def __init__(self, read: Callable[[], BacklogSnapshot]) -> None:
        self.read = read

    def collect(self) -> Iterator[GaugeMetricFamily]:
        try:
            snapshot = self.read()
        except Exception:  # the broker is away: no sample rather than a false zero
            return
        backlog = GaugeMetricFamily(
            "celeriac_queue_backlog",
            "Messages waiting in tenant queues, by pool and band.",
            labels=["pool", "band"],
        )
        oldest = GaugeMetricFamily(
            "celeriac_queue_oldest_age_seconds",
            "Age of the oldest waiting message, by pool and band.",
            labels=["pool", "band"],
        )
        ready = GaugeMetricFamily(
            "celeriac_queue_ready", "Messages in the pool's ready queue.", labels=["pool"]
        )
        running = GaugeMetricFamily(
            "celeriac_queue_running", "Tasks the pool's live workers hold.", labels=["pool"]
        )
        for (pool, band), (messages, age) in sorted(snapshot.bands.items()):
            backlog.add_metric([pool, band], messages)
            oldest.add_metric([pool, band], age)
        for pool, count in sorted(snapshot.ready.items()):
            ready.add_metric([pool], count)
        for pool, count in sorted(snapshot.running.items()):
            running.add_metric([pool], count)
        yield from (backlog, oldest, ready, running)


class BacklogSnapshot:
    """One read of the queues: per (pool, band) messages and oldest age; per pool ready
    and running counts."""

    def __init__(self) -> None:
        self.bands: dict[tuple[str, str], tuple[int, float]] = {}
        self.ready: dict[str, int] = {}
        self.running: dict[str, int] = {}


class WorkerSlotsCollector(Collector):
    """This worker's slots, free and busy (each worker serves its own; sum by pool)."""

    def __init__(self, pool: str, read: Callable[[], tuple[int, int]]) -> None:
        self.pool = pool
        self.read = read  # -> (slots, busy)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        slots, busy = self.read()
        family = GaugeMetricFamily(
            "celeriac_worker_slots",
            "Task slots of this worker by state (free, busy).",
            labels=["pool", "state"],
        )
        family.add_metric([self.pool, "busy"], min(busy, slots))
        family.add_metric([self.pool, "free"], max(0, slots - busy))
        yield family


# --- reading the queues (beat's gauges, the tenant views) ----------------------------------


def oldest_age(dispatcher: FairDispatcher, queues: Sequence[TenantQueue], now: float) -> float:
    """Seconds since the oldest of ``queues``' heads was published (0 when none says).

    kombu's Redis transport LPUSHes and BRPOPs, so a list's oldest message is its last."""
    if not queues:
        return 0.0
    with dispatcher.client.pipeline(transaction=False) as pipe:
        for queue in queues:
            pipe.lindex(queue.name, -1)
        heads = pipe.execute()
    published = [p for p in (_published_at(h) for h in heads) if p is not None]
    return max(0.0, now - min(published)) if published else 0.0


def _published_at(raw: bytes | str | None) -> float | None:
    if raw is None:
        return None
    try:
        value = json.loads(raw)["headers"][PUBLISHED_HEADER]
    except (ValueError, KeyError, TypeError):
        return None
    return float(value) if isinstance(value, int | float) else None


def backlog_snapshot(dispatcher: FairDispatcher) -> BacklogSnapshot:
    """Backlog and oldest age per (pool, band), ready and running per pool: the admin
    view's reads (``tenant_backlogs``, ``ready_depth``, ``held``) plus the queues' heads."""
    now = time.time()
    waiting = dispatcher.tenant_backlogs()
    by_band: defaultdict[tuple[Pool, str], list[TenantQueue]] = defaultdict(list)
    for queue in waiting:
        by_band[(queue.pool, queue.band.value)].append(queue)
    snapshot = BacklogSnapshot()
    for pool in Pool:
        for band in BANDS:
            queues = by_band.get((pool, band.value), [])
            messages = sum(waiting[q] for q in queues)
            snapshot.bands[(pool.value, band.value)] = (
                messages,
                oldest_age(dispatcher, queues, now),
            )
        snapshot.ready[pool.value] = dispatcher.ready_depth(pool)
        snapshot.running[pool.value] = dispatcher.held(pool)
    return snapshot
