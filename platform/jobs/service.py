"""Reading and cancelling jobs (submitting is :mod:`celeriac.platform.jobs.ingest`). Every
statement is in :mod:`celeriac.platform.jobs.repository`, scoped to the calling tenant."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import ColumnElement
from sqlalchemy.orm import Session

from celeriac.platform.auth.context import TenantContext
from celeriac.platform.errors import Conflict, NotFound
from celeriac.platform.jobs import lifecycle, repository
from celeriac.platform.jobs.data import DataDeleted
from celeriac.platform.jobs.repository import JobRepository
from celeriac.platform.jobs.schemas import JobOut, StageProgress, TaskError
from celeriac.platform.models import (
    FINAL_JOB_STATES,
    Job,
    JobState,
    utcnow,
)
from celeriac.platform.storage import BlobNotFound
from celeriac.platform.tasks import default_publisher
from celeriac.platform.tenant_data import tenant_blobs

logger = logging.getLogger(__name__)


def list_jobs(
    session: Session,
    ctx: TenantContext,
    *,
    state: JobState | None,
    created_after: datetime | None,
    created_before: datetime | None,
    cursor: str | None,
    limit: int,
) -> tuple[Sequence[Job], str | None]:
    filters: list[ColumnElement[bool]] = []
    if state is not None:
        filters.append(Job.state == state)
    if created_after is not None:
        filters.append(Job.created_at >= created_after)
    if created_before is not None:
        filters.append(Job.created_at < created_before)
    return JobRepository(session, ctx).page(*filters, cursor=cursor, limit=limit)


def job_summary(job: Job) -> JobOut:
    """A job without its per-task detail (for listings)."""
    return JobOut(
        id=job.id,
        state=job.state,
        priority=job.priority,
        stage=job.stage,
        pipeline=job.pipeline,
        record_count=job.record_count,
        payload_bytes=job.payload_bytes,
        metadata=job.job_metadata,
        error=job.error,
        created_at=job.created_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
        held_since=job.held_since,
        duration_ms=_duration_ms(job),
    )


def job_detail(session: Session, ctx: TenantContext, job_id: uuid.UUID) -> JobOut:
    """State, per-stage progress, timings and task errors."""
    job = JobRepository(session, ctx).get(job_id)
    counts = repository.task_counts(session, ctx.tenant_id, job.id)
    progress: dict[str, StageProgress] = {}
    for stage, task_state, count in counts:
        entry = progress.setdefault(stage.value, StageProgress())
        setattr(entry, task_state.value, getattr(entry, task_state.value) + count)
        entry.total += count
    failed = repository.failed_tasks(session, ctx.tenant_id, job.id)
    out = job_summary(job)
    out.progress = progress
    out.errors = [
        TaskError(
            stage=t.stage,
            plugin=t.plugin,
            chunk=t.chunk,
            state=t.state.value,
            error=t.error,
            attempts=t.attempts,
        )
        for t in failed
    ]
    return out


def job_results(session: Session, ctx: TenantContext, job_id: uuid.UUID) -> bytes:
    """The decrypted result document of a finished job."""
    job = JobRepository(session, ctx).get(job_id)
    if job.state not in FINAL_JOB_STATES:
        raise Conflict(
            f"job {job.id} is {job.state.value}; results are available when it ends",
            headers={"Retry-After": "2"},
        )
    if job.data_deleted_at is not None:
        raise DataDeleted(
            f"job {job.id}'s data, its results included, was deleted on "
            f"{job.data_deleted_at:%Y-%m-%d}"
        )
    if job.result_key is None:
        raise NotFound(f"job {job.id} ended {job.state.value} without results")
    try:
        return tenant_blobs().get(str(ctx.tenant_id), job.result_key)
    except BlobNotFound:
        raise NotFound(f"the results of job {job.id} are no longer stored") from None


def cancel_job(session: Session, ctx: TenantContext, job_id: uuid.UUID) -> Job:
    """End a queued or running job ``cancelled`` (through the lifecycle's one
    :func:`~celeriac.platform.jobs.lifecycle.end_job`); after the commit the orchestrator
    revokes its open tasks. 409 once the job has ended."""
    job = JobRepository(session, ctx).get(job_id)
    publications = lifecycle.end_job(session, job, JobState.CANCELLED, source="api")
    session.refresh(job)
    if publications is None:
        raise Conflict(f"job {job.id} has already ended ({job.state.value})")
    default_publisher().after_commit(session, publications)
    return job


def _duration_ms(job: Job) -> int | None:
    if job.started_at is None:
        return None
    end = job.finished_at or utcnow()
    return int((end - job.started_at).total_seconds() * 1000)
