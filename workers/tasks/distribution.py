"""Distribution pool (gevent): fan-out of compute tasks, fan-in through the database,
finalisation and webhook delivery. I/O only."""

from __future__ import annotations

import logging

from celery import shared_task

from celeriac.platform.models import AttemptTrigger
from celeriac.workers import webhooks
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


@shared_task(name="celeriac.distribution.deliver_webhook")
def deliver_webhook(delivery_id: str, trigger: str = "scheduled") -> None:
    """One attempt of a webhook delivery (a no-op if it is not due or already sent)."""
    state = webhooks.deliver(delivery_id, AttemptTrigger(trigger))
    logger.info("webhook attempt", extra={"delivery_id": delivery_id,
                                          "state": state.value if state else None})  # fmt: skip


@shared_task(name="celeriac.distribution.deliver_due_webhooks", ignore_result=True)
def deliver_due_webhooks() -> int:
    """Beat: publish the deliveries that are due (retries, lost messages, dead workers)."""
    return webhooks.due_deliveries()
