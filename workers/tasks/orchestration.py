"""Orchestration pool (gevent): the job state machine. Decides what runs next; computes
nothing and never blocks on anything but short database and broker calls."""

from __future__ import annotations

import logging

from celery import current_app, shared_task

from celeriac.platform.db import transaction
from celeriac.workers.canvas import state, steps
from celeriac.workers.tasks import send

logger = logging.getLogger(__name__)


@shared_task(name="celeriac.orchestration.start_job")
def start_job(tenant_id: str, job_id: str) -> None:
    """Move a queued job to running and dispatch its current stage (idempotent)."""
    stage = steps.start_job(tenant_id, job_id, send=send)
    logger.info("job dispatched", extra={"stage": stage})


@shared_task(name="celeriac.orchestration.cancel_job")
def cancel_job(tenant_id: str, job_id: str) -> None:
    """The API has set the job ``cancelled``: mark its open tasks cancelled and revoke
    their messages, terminating any that already run."""
    with transaction() as session:
        job = state.load_job(session, tenant_id, job_id)
        if job is None:
            return
        celery_ids = state.cancel_open_tasks(session, job)
        # The cancelled job's slot of the tenant's running-job limit is free.
        released = steps.release_held(session, job.tenant_id)
    steps.start_released(released, send)
    if celery_ids:
        current_app.control.revoke(celery_ids, terminate=True, signal="SIGTERM")
    logger.info("job cancelled", extra={"revoked": len(celery_ids)})
