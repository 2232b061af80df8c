"""A finished job's data: re-running it, deleting it, and retention.

A job's blobs (payload chunks, datasets, analyzer outputs, the result document) all live
under ``tenants/<tenant>/jobs/<job>/``, so deleting them is one prefix deletion (with their
cached copies); they are encrypted under the job's own data key, which the deletion
destroys too (``jobs.data_key``, docs/adr/0015), so a copy that escaped the deletion (an
S3 object version, a backup) cannot be decrypted either. The job's row stays, marked
``data_deleted_at``: listings, ``rerun_of`` links and usage records (append-only, which
billing reads) keep meaning something.

Retention: a finished job's data is kept ``retention_days`` (the plan's, or the admin's
override in ``quotas``) after it finished; beat's sweep deletes what is past it, in bounded
batches, and writes a ``job.expired`` webhook event in the same transaction.
"""

from __future__ import annotations

import logging
import uuid
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.orm import Session

from celeriac.platform.auth.context import TenantContext
from celeriac.platform.db import transaction
from celeriac.platform.errors import Conflict, ProblemError
from celeriac.platform.jobs import repository
from celeriac.platform.jobs.payload import Payload, chunk_key
from celeriac.platform.jobs.repository import JobRepository
from celeriac.platform.jobs.schemas import JobOut
from celeriac.platform.models import FINAL_JOB_STATES, Job, utcnow
from celeriac.platform.quotas.plans import tenant_limits
from celeriac.platform.storage.blobs import tenant_prefix, validate_prefix
from celeriac.platform.tenant_data import tenant_blobs
from celeriac.platform.webhooks import events as webhook_events
from celeriac.platform.webhooks.service import EventType

logger = logging.getLogger(__name__)

SWEEP_BATCH = 100


class DataDeleted(ProblemError):
    status = 410
    code = "job-data-deleted"
    title = "Job data deleted"


def job_prefix(tenant_id: uuid.UUID, job_id: uuid.UUID) -> str:
    """``tenants/<tenant>/jobs/<job>/``: every blob of the job."""
    return validate_prefix(f"{tenant_prefix(str(tenant_id))}jobs/{job_id}/")


def expires_at(job: Job, retention_days: int) -> datetime | None:
    """When a finished job's data is due for deletion (None while it runs or once gone)."""
    if job.finished_at is None or job.data_deleted_at is not None:
        return None
    return job.finished_at + timedelta(days=retention_days)


def retention_days(session: Session, ctx: TenantContext) -> int:
    return tenant_limits(session, ctx.tenant_id).retention_days


def with_data_fields(job: Job, out: JobOut, retention: int) -> JobOut:
    """``out`` with ``rerun_of``, ``data_deleted_at`` and ``expires_at`` filled in."""
    out.rerun_of = job.rerun_of
    out.data_deleted_at = job.data_deleted_at
    out.expires_at = expires_at(job, retention)
    return out


def stored_payload(ctx: TenantContext, job: Job) -> Payload:
    """The records of a job as they were stored (its payload chunks, decrypted)."""
    if job.data_deleted_at is not None:
        raise DataDeleted(
            f"job {job.id}'s records were deleted on {job.data_deleted_at:%Y-%m-%d}; "
            "it cannot be re-run (submit the records again)"
        )
    chunks = int((job.checkpoints.get("payload") or {}).get("chunks", 0))
    blobs = tenant_blobs()
    lines: list[bytes] = []
    for index in range(chunks):
        raw = blobs.get(str(ctx.tenant_id), chunk_key(job.payload_key, index))
        lines.extend(line for line in raw.split(b"\n") if line)
    return Payload(lines)


def delete_job_data(session: Session, ctx: TenantContext, job_id: uuid.UUID) -> Job:
    """Delete a finished job's blobs and mark it (409 while it is queued or running)."""
    job = JobRepository(session, ctx).get(job_id, for_update=True)
    if job.state not in FINAL_JOB_STATES:
        raise Conflict(
            f"job {job.id} is {job.state.value}; cancel it first (POST /v1/jobs/{job.id}/cancel) "
            "or wait for it to end",
            extra={"state": job.state.value},
        )
    if job.data_deleted_at is None:
        blobs = tenant_blobs()
        removed = blobs.store.delete_prefix(job_prefix(ctx.tenant_id, job.id))
        job.data_deleted_at = utcnow()
        job.result_key = None
        # The crypto-shred: without its key no copy of the job's blobs decrypts again.
        shredded = job.data_key is not None
        job.data_key = None
        blobs.forget_job_key(str(ctx.tenant_id), str(job.id))
        logger.info(
            "job data deleted",
            extra={"job_id": str(job.id), "blobs": removed, "key_destroyed": shredded},
        )
    return job


def _expired_event(session: Session, job: Job) -> None:
    data: dict[str, Any] = {
        "job_id": str(job.id),
        "state": job.state.value,
        "finished_at": job.finished_at.isoformat() if job.finished_at else None,
        "data_deleted_at": job.data_deleted_at.isoformat() if job.data_deleted_at else None,
    }
    webhook_events.enqueue(
        session, job.tenant_id, EventType.JOB_EXPIRED, f"job:{job.id}:expired", data
    )


def expire_jobs(batch: int = SWEEP_BATCH, now: datetime | None = None) -> int:
    """Delete the data of at most ``batch`` finished jobs past their tenant's retention
    (oldest first, tenant by tenant); returns how many. Beat calls it until it returns
    less than ``batch``."""
    now = now or utcnow()
    expired = 0
    with transaction() as session:
        # Tenants with anything finished longer ago than the shortest retention (1 day).
        tenants = repository.unscoped_tenants_with_jobs_finished_before(
            session, now - timedelta(days=1)
        )
    for tenant_id in tenants:
        if expired >= batch:
            break
        with transaction() as session:
            cutoff = now - timedelta(days=tenant_limits(session, tenant_id).retention_days)
            jobs = repository.lock_jobs_finished_before(session, tenant_id, cutoff, batch - expired)
            for job in jobs:
                tenant_blobs().store.delete_prefix(job_prefix(tenant_id, job.id))
                repository.mark_data_deleted(session, tenant_id, job.id, now)  # and its key
                tenant_blobs().forget_job_key(str(tenant_id), str(job.id))
                session.refresh(job)
                _expired_event(session, job)
            expired += len(jobs)
    if expired:
        logger.info("expired job data", extra={"jobs": expired})
    return expired
