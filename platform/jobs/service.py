"""Submitting, reading and cancelling jobs. Every query goes through ``JobRepository``,
which is scoped to the calling tenant."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import ColumnElement, func, select, update
from sqlalchemy.orm import Session

from celeriac.platform.auth.context import TenantContext
from celeriac.platform.db import run_after_commit
from celeriac.platform.errors import Conflict, NotFound
from celeriac.platform.jobs.schemas import JobOut, StageProgress, TaskError
from celeriac.platform.models import (
    FINAL_JOB_STATES,
    Job,
    JobState,
    JobTask,
    Priority,
    TaskState,
    utcnow,
)
from celeriac.platform.repository import TenantRepository
from celeriac.platform.storage import BlobNotFound
from celeriac.platform.tasks import CANCEL_JOB, publish
from celeriac.platform.tenant_data import tenant_blobs
from celeriac.platform.usage.metrics import record_job_completed
from celeriac.platform.webhooks import events

logger = logging.getLogger(__name__)


class JobRepository(TenantRepository[Job]):
    model = Job
    not_found = "job"


def _publish(name: str, band: Priority, tenant_slug: str, kwargs: dict[str, str]) -> None:
    try:
        publish(name, band=band, tenant_slug=tenant_slug, kwargs=kwargs)
    except Exception:
        # The job row is committed and queued: the reconciler re-dispatches it.
        logger.exception("publishing %s failed", name, extra={"job_id": kwargs.get("job_id")})


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
        id=job.id, state=job.state, priority=job.priority, stage=job.stage,
        pipeline=job.pipeline, record_count=job.record_count, payload_bytes=job.payload_bytes,
        metadata=job.job_metadata, error=job.error, created_at=job.created_at,
        started_at=job.started_at, finished_at=job.finished_at, held_since=job.held_since,
        duration_ms=_duration_ms(job),
    )  # fmt: skip


def job_detail(session: Session, ctx: TenantContext, job_id: uuid.UUID) -> JobOut:
    """State, per-stage progress, timings and task errors."""
    job = JobRepository(session, ctx).get(job_id)
    counts = session.execute(
        select(JobTask.stage, JobTask.state, func.count())
        .where(JobTask.tenant_id == ctx.tenant_id, JobTask.job_id == job.id)
        .group_by(JobTask.stage, JobTask.state)
    ).all()
    progress: dict[str, StageProgress] = {}
    for stage, task_state, count in counts:
        entry = progress.setdefault(stage.value, StageProgress())
        setattr(entry, task_state.value, getattr(entry, task_state.value) + count)
        entry.total += count
    failed = session.scalars(
        select(JobTask)
        .where(
            JobTask.tenant_id == ctx.tenant_id,
            JobTask.job_id == job.id,
            JobTask.state.in_([TaskState.FAILED, TaskState.TIMED_OUT]),
        )
        .order_by(JobTask.stage, JobTask.plugin, JobTask.chunk)
        .limit(100)
    ).all()
    out = job_summary(job)
    out.progress = progress
    out.errors = [
        TaskError(stage=t.stage, plugin=t.plugin, chunk=t.chunk, state=t.state.value,
                  error=t.error, attempts=t.attempts)
        for t in failed
    ]  # fmt: skip
    return out


def job_results(session: Session, ctx: TenantContext, job_id: uuid.UUID) -> bytes:
    """The decrypted result document of a finished job."""
    job = JobRepository(session, ctx).get(job_id)
    if job.state not in FINAL_JOB_STATES:
        raise Conflict(
            f"job {job.id} is {job.state.value}; results are available when it ends",
            headers={"Retry-After": "2"},
        )
    if job.result_key is None:
        raise NotFound(f"job {job.id} ended {job.state.value} without results")
    try:
        return tenant_blobs().get(str(ctx.tenant_id), job.result_key)
    except BlobNotFound:
        raise NotFound(f"the results of job {job.id} are no longer stored") from None


def cancel_job(session: Session, ctx: TenantContext, job_id: uuid.UUID) -> Job:
    """Move a queued or running job to ``cancelled`` (compare-and-set) and ask the
    orchestrator to revoke its pending tasks."""
    job = JobRepository(session, ctx).get(job_id)
    cancelled = session.execute(
        update(Job)
        .where(
            Job.tenant_id == ctx.tenant_id,
            Job.id == job.id,
            Job.state.in_([JobState.QUEUED, JobState.RUNNING]),
        )
        .values(state=JobState.CANCELLED, finished_at=utcnow(), updated_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    if cancelled.rowcount == 0:  # type: ignore[attr-defined]
        session.refresh(job)
        raise Conflict(f"job {job.id} has already ended ({job.state.value})")
    session.refresh(job)
    events.job_ended(session, job, JobState.CANCELLED)
    record_job_completed(session, job, JobState.CANCELLED, source="api")
    kwargs = {"tenant_id": str(ctx.tenant_id), "job_id": str(job.id)}
    run_after_commit(session, lambda: _publish(CANCEL_JOB, Priority.HIGH, ctx.tenant_slug, kwargs))
    return job


def _duration_ms(job: Job) -> int | None:
    if job.started_at is None:
        return None
    end = job.finished_at or utcnow()
    return int((end - job.started_at).total_seconds() * 1000)
