"""Tasks every pool serves. Names carry the pool so that ``task_routes`` route by glob."""

from __future__ import annotations

import logging
import time

from celery import shared_task

from celeriac.platform.queues import TaskName

logger = logging.getLogger(__name__)


def _ping(pool: str) -> str:
    logger.info("ping", extra={"pool": pool})
    return pool


@shared_task(name=TaskName.PING_ORCHESTRATION, ignore_result=False)
# ARG001: the Publisher sends every task its tenant_id.
def ping_orchestration(tenant_id: str | None = None) -> str:  # noqa: ARG001
    """Answer from an orchestration worker (liveness check of the pool)."""
    return _ping("orchestration")


@shared_task(name=TaskName.PING_DISTRIBUTION, ignore_result=False)
# ARG001: the Publisher sends every task its tenant_id.
def ping_distribution(tenant_id: str | None = None) -> str:  # noqa: ARG001
    """Answer from a distribution worker (liveness check of the pool)."""
    return _ping("distribution")


@shared_task(name=TaskName.PING_COMPUTE, ignore_result=False)
# ARG001: the Publisher sends every task its tenant_id.
def ping_compute(tenant_id: str | None = None) -> str:  # noqa: ARG001
    """Answer from a compute worker (liveness check of the pool)."""
    return _ping("compute")


@shared_task(name=TaskName.NOOP, ignore_result=True)
def noop_compute(
    tenant_id: str | None = None,  # noqa: ARG001 - the Publisher sends every task its tenant_id
    label: str | None = None,
    sent_at: float = 0.0,
    work_ms: int = 0,
) -> None:
    """Benchmarks measure the queueing and dispatch layer with it: logs the delay from
    ``sent_at`` (the publisher's ``time.time()``) to its start, then sleeps ``work_ms``
    (a stand-in for a task's work)."""
    if sent_at:
        delay_ms = (time.time() - sent_at) * 1000
        logger.info("noop started", extra={"label": label, "delay_ms": delay_ms})
    if work_ms:
        time.sleep(work_ms / 1000)
