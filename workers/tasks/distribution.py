"""Distribution pool (gevent): fan-out of compute tasks, fan-in through the database,
finalisation and (later) webhook delivery. I/O only."""

from __future__ import annotations

import logging

from celery import shared_task

from celeriac.workers.canvas import steps
from celeriac.workers.tasks import send, send_many

logger = logging.getLogger(__name__)


@shared_task(name="celeriac.distribution.fan_out")
def fan_out(tenant_id: str, job_id: str, stage: str) -> None:
    """Create a stage's compute tasks (one per dataset generator x chunk, or analyzer x
    dataset) and publish every one still open."""
    count = steps.fan_out(tenant_id, job_id, stage, send=send, send_many=send_many)
    logger.info("stage fanned out", extra={"stage": stage, "tasks": count})


@shared_task(name="celeriac.distribution.finalize")
def finalize(tenant_id: str, job_id: str) -> None:
    """Assemble the result document and end the job with its usage records."""
    outcome = steps.finalize(tenant_id, job_id, send=send)
    logger.info("job finished", extra={"state": outcome.value if outcome else None})
