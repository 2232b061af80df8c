"""Events for a tenant's webhook targets: a message and one delivery per matching target,
written in the transaction of the change that causes them.

A message's ``event_key`` names its cause (``job:<id>:ended``), unique per tenant, so a
redelivered finalize or a retried cancel enqueues nothing twice. Deliveries are database
rows with a due time: the distribution pool sends them, and beat re-publishes any that are
due and not being sent (a retry's time has come, or a message was lost), so a retry
survives any worker restart. Published only after the commit, by task name.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from celeriac.platform.models import (
    Job,
    JobState,
    Priority,
    WebhookTarget,
    utcnow,
)
from celeriac.platform.queues import TaskName
from celeriac.platform.settings import get_settings
from celeriac.platform.tasks import Publication, default_publisher
from celeriac.platform.webhooks import payloads, repository
from celeriac.platform.webhooks.service import EventType, event_type_matches

logger = logging.getLogger(__name__)

MAX_PAYLOAD_BYTES = 20 * 1024
JOB_EVENTS = {
    JobState.SUCCEEDED: EventType.JOB_SUCCEEDED,
    JobState.PARTIAL: EventType.JOB_PARTIAL,
    JobState.FAILED: EventType.JOB_FAILED,
    JobState.CANCELLED: EventType.JOB_CANCELLED,
}


def enqueue(
    session: Session,
    tenant_id: uuid.UUID,
    event_type: EventType,
    event_key: str,
    data: dict[str, Any],
    *,
    targets: Sequence[WebhookTarget] | None = None,
    band: Priority = Priority.NORMAL,
    trigger: str = "scheduled",
) -> str | None:
    """Write the event's message and a delivery to each enabled target whose filter matches
    (or to ``targets``); returns the message id, or None if this cause was enqueued before.
    Deliveries are published when ``session`` commits."""
    now = utcnow()
    payload = {"type": event_type.value, "timestamp": _timestamp(now), "data": data}
    if len(payloads.encode(payload)) > MAX_PAYLOAD_BYTES:
        raise ValueError(f"a webhook payload is limited to {MAX_PAYLOAD_BYTES} bytes")
    message_id = "msg_" + uuid.uuid4().hex
    if not repository.insert_message(
        session,
        tenant_id,
        message_id=message_id,
        event_type=event_type.value,
        event_key=event_key,
        sealed_payload=payloads.seal(str(tenant_id), message_id, payload),
        created_at=now,
    ):
        return None
    if targets is None:
        candidates = repository.enabled_targets(session, tenant_id)
        targets = [t for t in candidates if event_type_matches(t.event_types, event_type)]
    if not targets:
        return message_id
    ids = repository.insert_deliveries(session, tenant_id, message_id, targets, now)
    slug = repository.tenant_slug(session, tenant_id)
    default_publisher().after_commit(session, delivery_messages(ids, slug, band, trigger))
    return message_id


def delivery_messages(
    delivery_ids: Sequence[str], tenant_slug: str, band: Priority | str, trigger: str
) -> list[Publication]:
    """The messages that ask the distribution pool to send these deliveries now (beat
    re-publishes any that are due, so a lost one is only late)."""
    return [
        Publication(
            TaskName.DELIVER_WEBHOOK, band, tenant_slug, {"delivery_id": d, "trigger": trigger}
        )
        for d in delivery_ids
    ]


def job_ended(session: Session, job: Job, state: JobState, error: str | None = None) -> str | None:
    """The ``job.<state>`` event of a job that just ended (in the ending transaction)."""
    event = JOB_EVENTS[state]
    base = get_settings().webhooks.public_api_url.rstrip("/")
    data = {
        "job_id": str(job.id),
        "state": state.value,
        "priority": job.priority.value,
        "record_count": job.record_count,
        "metadata": job.job_metadata,
        "error": error,
        "results_url": f"{base}/v1/jobs/{job.id}/results",
    }
    if len(json.dumps(data).encode()) > MAX_PAYLOAD_BYTES - 1024:
        data["metadata"] = {}  # metadata is bounded, but the payload must stay small
    return enqueue(session, job.tenant_id, event, f"job:{job.id}:ended", data, band=job.priority)


def _timestamp(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")
