"""Orchestration pool (gevent): the job state machine. Decides what runs next; computes
nothing and never blocks on anything but short database and broker calls."""

from __future__ import annotations

import logging

from celery import current_app, shared_task

from celeriac.platform.queues import TaskName
from celeriac.workers.flow import orchestration as steps

logger = logging.getLogger(__name__)


@shared_task(name=TaskName.START_JOB)
def start_job(tenant_id: str, job_id: str) -> None:
    """Move a queued job to running and dispatch its current stage (idempotent)."""
    stage = steps.start_job(tenant_id, job_id)
    logger.info("job dispatched", extra={"stage": stage})


@shared_task(name=TaskName.CANCEL_JOB)
def cancel_job(tenant_id: str, job_id: str) -> None:
    """The job has ended ``cancelled``: mark its open tasks cancelled and revoke their
    messages, terminating any that already run."""
    celery_ids = steps.cancel_tasks(tenant_id, job_id)
    if celery_ids:
        current_app.control.revoke(celery_ids, terminate=True, signal="SIGTERM")
    logger.info("job cancelled", extra={"revoked": len(celery_ids)})
