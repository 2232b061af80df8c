"""The billable facts and how each is recorded.

Every record's id is derived from its cause (``job_<id>:compute.seconds``,
``delivery_<id>:webhooks.delivered``), and records are inserted with ON CONFLICT DO NOTHING
in the transaction of the state change that causes them: a redelivered task or a replayed
request finds its record already there and adds nothing. Records are never updated or
deleted (a database trigger refuses it, migration 0005_quotas); a correction is a new
record whose ``adjusts_id`` names the original (:mod:`celeriac.platform.usage.service`).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any

from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from celeriac.platform.models import Job, JobState, UsageRecord, utcnow


class Metric(StrEnum):
    JOBS_SUBMITTED = "jobs.submitted"
    # One per job that reached a final state; properties.state says which.
    JOBS_COMPLETED = "jobs.completed"
    RECORDS_PROCESSED = "records.processed"
    COMPUTE_SECONDS = "compute.seconds"
    STORAGE_BYTES = "storage.bytes"
    WEBHOOKS_DELIVERED = "webhooks.delivered"


UNITS: dict[Metric, str] = {
    Metric.JOBS_SUBMITTED: "job",
    Metric.JOBS_COMPLETED: "job",
    Metric.RECORDS_PROCESSED: "record",
    Metric.COMPUTE_SECONDS: "second",
    Metric.STORAGE_BYTES: "byte",
    Metric.WEBHOOKS_DELIVERED: "delivery",
}


def record_id(cause: str, metric: Metric) -> str:
    """The id of the record ``cause`` produces for ``metric``: the same cause, the same id."""
    return f"{cause}:{metric.value}"


def job_cause(job_id: uuid.UUID | str) -> str:
    return f"job_{job_id}"


def usage_row(
    *,
    cause: str,
    tenant_id: uuid.UUID,
    metric: Metric,
    quantity: Decimal | int,
    occurred_at: datetime,
    properties: Mapping[str, Any],
    source: str,
    recorded_at: datetime | None = None,
) -> dict[str, Any]:
    """One record as a row for a Core INSERT."""
    return {
        "id": record_id(cause, metric), "tenant_id": tenant_id, "metric": metric.value,
        "quantity": Decimal(quantity), "unit": UNITS[metric], "occurred_at": occurred_at,
        "recorded_at": recorded_at or occurred_at, "properties": dict(properties),
        "source": source, "adjusts_id": None,
    }  # fmt: skip


def insert_usage(session: Session, rows: Sequence[Mapping[str, Any]]) -> None:
    """Insert ``rows`` in the session's transaction; a row whose id exists is skipped."""
    if not rows:
        return
    insert = pg_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert
    session.execute(
        insert(UsageRecord).values(list(rows)).on_conflict_do_nothing(index_elements=["id"])
    )


def job_properties(job: Job, **extra: Any) -> dict[str, Any]:
    return {
        "job_id": str(job.id),
        "priority": job.priority.value,
        "pipeline": job.pipeline.get("name") or "custom",
        **extra,
    }


def job_completed_rows(
    job: Job, outcome: JobState, *, source: str, compute_ms: int = 0, stored_bytes: int = 0,
    with_consumption: bool = True,
) -> list[dict[str, Any]]:  # fmt: skip
    """The records of a job that ended: always ``jobs.completed`` (by final state); with
    ``with_consumption``, also what it consumed (records, compute time, storage)."""
    now = utcnow()
    properties = job_properties(job, state=outcome.value)
    facts: list[tuple[Metric, Decimal]] = [(Metric.JOBS_COMPLETED, Decimal(1))]
    if with_consumption:
        facts += [
            (Metric.RECORDS_PROCESSED, Decimal(job.record_count)),
            (Metric.COMPUTE_SECONDS, Decimal(compute_ms) / 1000),
            (Metric.STORAGE_BYTES, Decimal(stored_bytes + job.payload_bytes)),
        ]
    return [
        usage_row(cause=job_cause(job.id), tenant_id=job.tenant_id, metric=metric,
                  quantity=quantity, occurred_at=now, properties=properties, source=source)
        for metric, quantity in facts
    ]  # fmt: skip


def record_job_completed(session: Session, job: Job, outcome: JobState, *, source: str) -> None:
    """``jobs.completed`` of a job ended without running to its end (cancelled, failed by
    the reconciler), in the transaction that ended it."""
    insert_usage(session, job_completed_rows(job, outcome, source=source, with_consumption=False))


def webhook_delivered_row(
    *, delivery_id: uuid.UUID | str, tenant_id: uuid.UUID, target_id: uuid.UUID | str,
    event_type: str, job_id: str | None, delivered_at: datetime,
) -> dict[str, Any]:  # fmt: skip
    """The ``webhooks.delivered`` record of a delivery that succeeded: for the delivery
    worker to insert (:func:`insert_usage`) in the transaction that marks it delivered.
    One per delivery, whatever the attempts it took."""
    return usage_row(
        cause=f"delivery_{delivery_id}", tenant_id=tenant_id,
        metric=Metric.WEBHOOKS_DELIVERED, quantity=1, occurred_at=delivered_at,
        properties={"delivery_id": str(delivery_id), "target_id": str(target_id),
                    "event_type": event_type, "job_id": job_id},
        source="delivery",
    )  # fmt: skip
