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

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from celeriac.platform.db import run_after_commit
from celeriac.platform.models import (
    DeliveryState,
    Job,
    JobState,
    Priority,
    TargetState,
    Tenant,
    WebhookDelivery,
    WebhookMessage,
    WebhookTarget,
    utcnow,
)
from celeriac.platform.settings import get_settings
from celeriac.platform.tasks import Publication, publish_many
from celeriac.platform.webhooks.service import EventType, event_type_matches

logger = logging.getLogger(__name__)

DELIVER = "celeriac.distribution.deliver_webhook"
MAX_PAYLOAD_BYTES = 20 * 1024
JOB_EVENTS = {
    JobState.SUCCEEDED: EventType.JOB_SUCCEEDED,
    JobState.PARTIAL: EventType.JOB_PARTIAL,
    JobState.FAILED: EventType.JOB_FAILED,
    JobState.CANCELLED: EventType.JOB_CANCELLED,
}


def _insert(session: Session) -> Any:
    return pg_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert


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
    if len(json.dumps(payload, separators=(",", ":")).encode()) > MAX_PAYLOAD_BYTES:
        raise ValueError(f"a webhook payload is limited to {MAX_PAYLOAD_BYTES} bytes")
    message_id = "msg_" + uuid.uuid4().hex
    inserted = session.scalar(
        _insert(session)(WebhookMessage)
        .values(id=message_id, tenant_id=tenant_id, event_type=event_type.value,
                event_key=event_key, payload=payload, created_at=now)
        .on_conflict_do_nothing(index_elements=["tenant_id", "event_key"])
        .returning(WebhookMessage.id)
    )  # fmt: skip
    if inserted is None:
        return None
    if targets is None:
        candidates = session.scalars(
            select(WebhookTarget).where(
                WebhookTarget.tenant_id == tenant_id, WebhookTarget.state == TargetState.ENABLED
            )
        ).all()
        targets = [t for t in candidates if event_type_matches(t.event_types, event_type)]
    if not targets:
        return message_id
    rows = [
        {"id": uuid.uuid4(), "tenant_id": tenant_id, "message_id": message_id,
         "target_id": t.id, "state": DeliveryState.PENDING, "attempt_count": 0,
         "next_attempt_at": now, "created_at": now, "updated_at": now}
        for t in targets
    ]  # fmt: skip
    session.execute(_insert(session)(WebhookDelivery).values(rows))
    slug = session.scalar(select(Tenant.slug).where(Tenant.id == tenant_id)) or ""
    ids = [str(row["id"]) for row in rows]
    run_after_commit(session, lambda: publish_deliveries(ids, slug, band, trigger))
    return message_id


def publish_deliveries(
    delivery_ids: Sequence[str], tenant_slug: str, band: Priority | str, trigger: str
) -> None:
    """Ask the distribution pool to send these deliveries now (beat is the safety net)."""
    try:
        publish_many([
            Publication(DELIVER, band, tenant_slug, {"delivery_id": d, "trigger": trigger})
            for d in delivery_ids
        ])  # fmt: skip
    except Exception:
        logger.exception("publishing %d webhook deliveries failed", len(delivery_ids))


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
