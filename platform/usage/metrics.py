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

from sqlalchemy import Connection
from sqlalchemy.orm import Session

from celeriac.platform.db import upsert_insert
from celeriac.platform.metrics import usage_recorded
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
        "id": record_id(cause, metric),
        "tenant_id": tenant_id,
        "metric": metric.value,
        "quantity": Decimal(quantity),
        "unit": UNITS[metric],
        "occurred_at": occurred_at,
        "recorded_at": recorded_at or occurred_at,
        "properties": dict(properties),
        "source": source,
        "adjusts_id": None,
    }


def insert_usage(session: Session | Connection, rows: Sequence[Mapping[str, Any]]) -> None:
    """Insert ``rows`` in the session's (or connection's) transaction; a row whose id
    exists is skipped. The one writer of usage records (a test checks no other module
    builds one)."""
    if not rows:
        return
    usage_recorded(str(row["metric"]) for row in rows)
    # The rows as parameters of one constant statement (SQLAlchemy batches them into one
    # multi-row INSERT, "insertmanyvalues"), not in the statement: a VALUES clause built
    # from the rows made a new cache key out of every value on each call (issue 16).
    session.execute(
        upsert_insert(session, UsageRecord).on_conflict_do_nothing(index_elements=["id"]),
        [dict(row) for row in rows],
    )


def job_properties(job: Job, **extra: Any) -> dict[str, Any]:
    return {
        "job_id": str(job.id),
        "priority": job.priority.value,
        "pipeline": job.pipeline.get("name") or "custom",
        **extra,
    }


def job_completed_rows(
    job: Job,
    outcome: JobState,
    *,
    source: str,
    compute_ms: int = 0,
    stored_bytes: int = 0,
    with_consumption: bool = True,
) -> list[dict[str, Any]]:
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
        usage_row(
            cause=job_cause(job.id),
            tenant_id=job.tenant_id,
            metric=metric,
            quantity=quantity,
            occurred_at=now,
            properties=properties,
            source=source,
        )
        for metric, quantity in facts
    ]


def record_job_completed(session: Session, job: Job, outcome: JobState, *, source: str) -> None:
    """``jobs.completed`` of a job ended without running to its end (cancelled, failed by
    the reconciler), in the transaction that ended it."""
    insert_usage(session, job_completed_rows(job, outcome, source=source, with_consumption=False))


def webhook_delivered_row(
    *,
    delivery_id: uuid.UUID | str,
    tenant_id: uuid.UUID,
    target_id: uuid.UUID | str,
    message_id: str,
    delivered_at: datetime,
) -> dict[str, Any]:
    """The ``webhooks.delivered`` record of a delivery (a message to one target) that
    succeeded, for the delivery worker to insert in the transaction that marks it
    delivered: one per delivery, whatever the attempts it took (ADR 0010)."""
    return usage_row(
        cause=f"delivery_{delivery_id}",
        tenant_id=tenant_id,
        metric=Metric.WEBHOOKS_DELIVERED,
        quantity=1,
        occurred_at=delivered_at,
        properties={
            "delivery_id": str(delivery_id),
            "target_id": str(target_id),
            "message_id": message_id,
        },
        source="delivery",
    )


def insert_adjustment(
    session: Session, original: UsageRecord, quantity: Decimal, *, reason: str, actor: str
) -> UsageRecord:
    """A correction of ``original``: a new record of its tenant, metric and unit whose
    quantity is added to it (the original is never changed)."""
    now = utcnow()
    record = UsageRecord(
        id=f"adjustment_{uuid.uuid4().hex}:{original.metric}",
        tenant_id=original.tenant_id,
        metric=original.metric,
        quantity=quantity,
        unit=original.unit,
        occurred_at=now,
        recorded_at=now,
        source="adjustment",
        adjusts_id=original.id,
        properties={
            "reason": reason,
            "by": actor,
            "original_occurred_at": original.occurred_at.isoformat(),
        },
    )
    session.add(record)
    session.flush()
    return record
