"""What the workers and beat tell operators: task metrics and the task-end log line (from
Celery's task signals), the metrics endpoint of each worker and of beat.

One JSON line per task end, for ELK and the like: task name, pool, tenant_id, job_id,
task_id, state, duration_ms, retries, plugin; ids only, never the arguments' contents.
"""

from __future__ import annotations

import logging
import time
from contextvars import ContextVar
from typing import Any

from celery import signals
from celery.exceptions import SoftTimeLimitExceeded, TimeLimitExceeded
from celery.worker import state as worker_state

from celeriac.platform import metrics
from celeriac.platform.dispatch import get_dispatcher
from celeriac.platform.queues import Pool
from celeriac.platform.settings import get_settings

logger = logging.getLogger("celeriac.tasks")

NO_PLUGIN = "none"
# The outcome a task reports of itself (a compute task records a plugin's failure and
# returns normally, which Celery counts as a success).
_reported: ContextVar[tuple[str, str] | None] = ContextVar("celeriac_task_outcome", default=None)
# task id -> (perf_counter at prerun, task name); per process.
_started: dict[str, float] = {}

_OUTCOMES = {
    "succeeded": "succeeded",
    "failed": "failed",
    "timed_out": "timed_out",
    "cancelled": "revoked",
}


def report_outcome(outcome: str, plugin: str | None = None) -> None:
    """Called by a task that decides its own outcome (``TaskState`` values) and plugin."""
    _reported.set((_OUTCOMES.get(outcome, outcome), plugin or NO_PLUGIN))


_POOLS = frozenset(pool.value for pool in Pool)


def _pool(name: str) -> str:
    """Task names carry their pool (``celeriac.<pool>.<name>``)."""
    parts = name.split(".")
    return parts[1] if len(parts) > 2 and parts[1] in _POOLS else "unknown"


def _ids(kwargs: Any) -> dict[str, Any]:
    args = kwargs if isinstance(kwargs, dict) else {}
    return {k: args.get(k) for k in ("tenant_id", "job_id")}


def task_ended(
    name: str,
    task_id: str,
    outcome: str,
    seconds: float | None,
    kwargs: Any,
    retries: int,
    plugin: str,
) -> None:
    """Count the task's end and write its log line."""
    pool = _pool(name)
    if get_settings().observability.metrics_enabled:
        metrics.task_ended(name, pool, outcome, seconds, plugin)
    logger.info(
        "task finished",
        extra={
            "task": name,
            "pool": pool,
            **_ids(kwargs),
            "task_id": task_id,
            "state": outcome,
            "duration_ms": None if seconds is None else round(seconds * 1000, 1),
            "retries": retries,
            "plugin": plugin,
        },
    )


@signals.task_prerun.connect
def _task_started(task_id: str | None = None, **_: Any) -> None:
    if task_id is not None:
        _started[task_id] = time.perf_counter()
    _reported.set(None)


@signals.task_postrun.connect
def _task_finished(
    sender: Any = None,
    task_id: str | None = None,
    kwargs: Any = None,
    retval: Any = None,
    state: str | None = None,
    **_: Any,
) -> None:
    if sender is None or task_id is None:
        return
    started = _started.pop(task_id, None)
    seconds = None if started is None else time.perf_counter() - started
    reported = _reported.get()
    plugin = reported[1] if reported else NO_PLUGIN
    if state == "RETRY":
        outcome = "retried"
    elif state == "FAILURE":
        timed_out = isinstance(retval, SoftTimeLimitExceeded | TimeLimitExceeded)
        outcome = "timed_out" if timed_out else "failed"
    elif reported is not None:
        outcome = reported[0]
    else:
        outcome = "succeeded"
    task_ended(sender.name, task_id, outcome, seconds, kwargs, sender.request.retries or 0, plugin)


@signals.task_failure.connect
def _task_failed_outside(
    sender: Any = None,
    task_id: str | None = None,
    exception: Any = None,
    kwargs: Any = None,
    **_: Any,
) -> None:
    # Sent by the worker's main process when the child never got to postrun: the hard
    # time limit killed it, or it was lost and its message not requeued. A failure inside
    # the task runs postrun as well, which counts it.
    if sender is None or task_id is None or task_id in _started:
        return
    outcome = "timed_out" if isinstance(exception, TimeLimitExceeded) else "failed"
    task_ended(sender.name, task_id, outcome, None, kwargs, 0, NO_PLUGIN)


@signals.task_revoked.connect
def _task_revoked(sender: Any = None, request: Any = None, **_: Any) -> None:
    # ``request`` is the task's Context here, which has no ``task_name``: the name is the
    # sender's.
    if sender is not None and request is not None:
        task_ended(sender.name, request.id, "revoked", None, request.kwargs, 0, NO_PLUGIN)


def worker_slots(worker: Any) -> tuple[int, int]:
    """(slots, busy) of a running worker: its concurrency and the tasks it holds."""
    return int(worker.concurrency), len(worker_state.active_requests)


def serve_worker_metrics(worker: Any, pool: str) -> None:
    """The worker's /metrics (its prefork children's files included), when a port is set."""
    obs = get_settings().observability
    if obs.metrics_port is None or not obs.metrics_enabled:
        return
    metrics.serve(
        obs.metrics_port,
        obs.metrics_host,
        metrics.WorkerSlotsCollector(pool, lambda: worker_slots(worker)),
    )
    logger.info("metrics served", extra={"port": obs.metrics_port})


def serve_beat_metrics() -> None:
    """Beat's /metrics: the queue backlog and dispatcher gauges, read at scrape time."""
    obs = get_settings().observability
    if obs.metrics_port is None or not obs.metrics_enabled:
        return

    def read() -> metrics.BacklogSnapshot:
        dispatcher = get_dispatcher()
        if dispatcher is None:
            return metrics.BacklogSnapshot()
        return metrics.backlog_snapshot(dispatcher)

    metrics.serve(obs.metrics_port, obs.metrics_host, metrics.BacklogCollector(read))
    logger.info("metrics served", extra={"port": obs.metrics_port})
