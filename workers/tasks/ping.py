"""Tasks every pool serves. Names carry the pool so that ``task_routes`` route by glob."""

from __future__ import annotations

import logging

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
