"""Distribution pool (gevent): fan-out of compute tasks, fan-in through the database,
finalisation and webhook delivery. I/O only."""

from __future__ import annotations

import logging

from celery import shared_task

from celeriac.platform.models import AttemptTrigger
from celeriac.platform.queues import TaskName
from celeriac.workers import webhooks
from celeriac.workers.flow import distribution as steps

logger = logging.getLogger(__name__)


@shared_task(name=TaskName.FAN_OUT)
def fan_out(tenant_id: str, job_id: str, stage: str) -> None:
    """Create a stage's compute tasks (one per dataset generator x chunk, or analyzer x
    dataset) and publish every one still open."""
    count = steps.fan_out(tenant_id, job_id, stage)
    logger.info("stage fanned out", extra={"stage": stage, "tasks": count})


@shared_task(name=TaskName.FINALIZE)
def finalize(tenant_id: str, job_id: str) -> None:
    """Assemble the result document and end the job with its usage records."""
    outcome = steps.finalize(tenant_id, job_id)
    logger.info("job finished", extra={"state": outcome.value if outcome else None})


@shared_task(name=TaskName.DELIVER_WEBHOOK)
def deliver_webhook(delivery_id: str, trigger: str = "scheduled") -> None:
    """One attempt of a webhook delivery (a no-op if it is not due or already sent)."""
    state = webhooks.deliver(delivery_id, AttemptTrigger(trigger))
    logger.info(
        "webhook attempt",
        extra={"delivery_id": delivery_id, "state": state.value if state else None},
    )


@shared_task(name=TaskName.DELIVER_DUE_WEBHOOKS, ignore_result=True)
def deliver_due_webhooks() -> int:
    """Beat: publish the deliveries that are due (retries, lost messages, dead workers)."""
    return webhooks.due_deliveries()
