"""The job state machine in the database: compare-and-set transitions only, so that a
redelivered message, a reconciler re-dispatch and a racing sibling all do no double work.

Every function takes the session of the task's transaction; the task commits.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import CursorResult, case, func, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from celeriac.platform.models import (
    FINAL_JOB_STATES,
    Job,
    JobStage,
    JobState,
    JobTask,
    Priority,
    TaskState,
    Tenant,
    utcnow,
)
from celeriac.platform.quotas.plans import tenant_limits
from celeriac.workers.canvas.plan import PlannedTask

OPEN_TASK_STATES = (TaskState.PENDING, TaskState.RUNNING)


def _rowcount(result: object) -> int:
    assert isinstance(result, CursorResult)
    return int(result.rowcount)


def load_job(session: Session, tenant_id: str, job_id: str) -> Job | None:
    return session.scalars(
        select(Job).where(Job.tenant_id == uuid.UUID(tenant_id), Job.id == uuid.UUID(job_id))
    ).one_or_none()


def lock_tenant(session: Session, tenant_id: uuid.UUID) -> None:
    """Serialise, per tenant, the decisions that count its running jobs (start, release):
    two starts at the same moment cannot both take the last free slot. NO KEY UPDATE
    leaves the foreign-key checks of concurrent inserts (KEY SHARE) unblocked; SQLite
    (embedded mode) serialises writers anyway."""
    session.execute(select(Tenant.id).where(Tenant.id == tenant_id).with_for_update(key_share=True))


def running_count(session: Session, tenant_id: uuid.UUID) -> int:
    return int(
        session.scalar(
            select(func.count()).select_from(Job)
            .where(Job.tenant_id == tenant_id, Job.state == JobState.RUNNING)
        ) or 0
    )  # fmt: skip


def start(session: Session, tenant_id: str, job_id: str) -> Job | Held | None:
    """queued -> running at the datasets stage, if the tenant has a free slot of its
    ``max_running_jobs`` quota; otherwise the job stays queued, marked held, until one of
    the tenant's jobs ends and releases it (:func:`release_held`). A running job is
    returned as it is (a re-dispatch continues from its checkpoint); None for a finished
    or unknown job."""
    tenant, job_uuid = uuid.UUID(tenant_id), uuid.UUID(job_id)
    queued = session.scalar(
        select(Job.id).where(Job.tenant_id == tenant, Job.id == job_uuid,
                             Job.state == JobState.QUEUED)
    )  # fmt: skip
    now = utcnow()
    if queued is not None:
        lock_tenant(session, tenant)
        limit = tenant_limits(session, tenant).max_running_jobs
        if running_count(session, tenant) >= limit:
            session.execute(
                update(Job)
                .where(Job.id == job_uuid, Job.state == JobState.QUEUED)
                .values(held_since=func.coalesce(Job.held_since, now), updated_at=now)
                .execution_options(synchronize_session=False)
            )
            return Held(limit)
        session.execute(
            update(Job)
            .where(Job.id == job_uuid, Job.state == JobState.QUEUED)
            .values(state=JobState.RUNNING, stage=JobStage.DATASETS, started_at=now,
                    updated_at=now, held_since=None)
            .execution_options(synchronize_session=False)
        )  # fmt: skip
    job = load_job(session, tenant_id, job_id)
    if job is None or job.state is not JobState.RUNNING:
        return None
    session.refresh(job)
    return job


@dataclass(frozen=True)
class Held:
    """The job waits, queued, for a free slot of its tenant's running-job limit."""

    limit: int


_BAND_ORDER = case(
    (Job.priority == Priority.HIGH, 0), (Job.priority == Priority.NORMAL, 1), else_=2
)


def release_held(session: Session, tenant_id: uuid.UUID) -> list[Job]:
    """The tenant's held jobs that its free slots can take now (high band first, then the
    oldest), unmarked: the caller publishes their start_job after its commit, and
    :func:`start` decides again (a slot taken meanwhile holds the job again). Called in
    the transaction that ends one of the tenant's jobs, so no end goes unnoticed."""
    lock_tenant(session, tenant_id)
    free = tenant_limits(session, tenant_id).max_running_jobs - running_count(session, tenant_id)
    if free <= 0:
        return []
    jobs = list(
        session.scalars(
            select(Job)
            .where(Job.tenant_id == tenant_id, Job.state == JobState.QUEUED,
                   Job.held_since.is_not(None))
            .order_by(_BAND_ORDER, Job.created_at, Job.id)
            .limit(free)
        )
    )  # fmt: skip
    if jobs:
        session.execute(
            update(Job)
            .where(Job.id.in_([j.id for j in jobs]), Job.state == JobState.QUEUED)
            .values(held_since=None, updated_at=utcnow())
            .execution_options(synchronize_session=False)
        )
    return jobs


def tenants_with_held_jobs(session: Session, limit: int = 1000) -> list[uuid.UUID]:
    return list(
        session.scalars(
            select(Job.tenant_id)
            .where(Job.state == JobState.QUEUED, Job.held_since.is_not(None))
            .distinct()
            .limit(limit)
        )
    )


def ensure_tasks(
    session: Session, job: Job, planned: Sequence[PlannedTask]
) -> tuple[list[JobTask], set[uuid.UUID]]:
    """Insert the planned tasks that do not exist yet, each with the id of the message that
    will run it; return the stage's open tasks and the ids of those inserted now."""
    inserted: set[uuid.UUID] = set()
    if planned:
        insert = pg_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert
        now = utcnow()
        rows = [
            {"id": uuid.uuid4(), "tenant_id": job.tenant_id, "job_id": job.id, "task_key": p.key,
             "stage": p.stage, "plugin": p.plugin, "plugin_version": p.plugin_version,
             "chunk": p.chunk, "input_key": p.input_key, "output_key": p.output_key,
             "state": TaskState.PENDING, "attempts": 0, "created_at": now, "updated_at": now,
             "celery_task_id": str(uuid.uuid4())}
            for p in planned
        ]  # fmt: skip
        inserted = set(
            session.scalars(
                insert(JobTask)
                .values(rows)
                .on_conflict_do_nothing(index_elements=["tenant_id", "job_id", "task_key"])
                .returning(JobTask.id)
            )
        )
    keys = [p.key for p in planned]
    return list(
        session.scalars(
            select(JobTask).where(
                JobTask.tenant_id == job.tenant_id,
                JobTask.job_id == job.id,
                JobTask.task_key.in_(keys),
                JobTask.state.in_(OPEN_TASK_STATES),
            )
        )
    ), inserted


def lease_expired(task: JobTask, lease_seconds: float) -> bool:
    """A running task whose run began longer ago than any run may last (the hard time
    limit) has lost its worker and may be run again."""
    began = task.started_at or task.updated_at
    return began < utcnow() - timedelta(seconds=lease_seconds)


def claimable(task: JobTask, message_id: str | None, lease_seconds: float) -> bool:
    """Who may run a task: anyone while it is pending; while it runs, only a redelivery of
    the message that runs it (its worker died) or anyone once the lease expired. A
    duplicate message (the reconciler's, a second publish) is refused, so no task runs
    twice at once."""
    if task.state is TaskState.PENDING:
        return True
    if task.state is not TaskState.RUNNING:
        return False
    return message_id == task.celery_task_id or lease_expired(task, lease_seconds)


def claim(
    session: Session, tenant_id: str, task_id: str, message_id: str, lease_seconds: float,
    ready: Callable[[JobTask, Job], bool] | None = None,
) -> tuple[JobTask, Job] | None:  # fmt: skip
    """Claim the task for ``message_id``: -> running with one more attempt, if its job
    is still running, :func:`claimable` allows it and ``ready`` (the tasks it runs after
    have ended) holds. Returns the task as claimed and its job."""
    task = session.scalars(
        select(JobTask).where(
            JobTask.tenant_id == uuid.UUID(tenant_id), JobTask.id == uuid.UUID(task_id)
        )
    ).one_or_none()
    if task is None or not claimable(task, message_id, lease_seconds):
        return None
    job = session.get(Job, task.job_id)
    if job is None or job.state is not JobState.RUNNING:
        return None
    if ready is not None and not ready(task, job):
        return None  # left pending: the last of the tasks it waits for publishes it
    now = utcnow()
    claimed = session.execute(
        update(JobTask)
        .where(JobTask.id == task.id, JobTask.state.in_(OPEN_TASK_STATES),
               JobTask.attempts == task.attempts)
        .values(state=TaskState.RUNNING, attempts=task.attempts + 1, started_at=now,
                updated_at=now, celery_task_id=message_id)
        .execution_options(synchronize_session=False)
    )  # fmt: skip
    if _rowcount(claimed) != 1:
        return None  # a sibling delivery of the same message got it
    task.state, task.attempts, task.started_at = TaskState.RUNNING, task.attempts + 1, now
    task.celery_task_id = message_id
    return task, job


def assign_messages(
    session: Session, tasks: Sequence[JobTask], inserted: set[uuid.UUID]
) -> dict[uuid.UUID, str]:
    """The id of the message about to run each task (kept so that cancelling the job can
    revoke a message not yet running). Tasks inserted by this transaction keep the id they
    were inserted with; the others (a republish) get a fresh one, since a claim tells a
    duplicate from a redelivery by its message id."""
    ids: dict[uuid.UUID, str] = {}
    for task in tasks:
        if task.id in inserted and task.celery_task_id:
            ids[task.id] = task.celery_task_id
            continue
        ids[task.id] = str(uuid.uuid4())
        session.execute(
            update(JobTask)
            .where(JobTask.id == task.id, JobTask.state.in_(OPEN_TASK_STATES))
            .values(celery_task_id=ids[task.id])
            .execution_options(synchronize_session=False)
        )
    return ids


def lock_job(session: Session, tenant_id: str, job_id: str) -> Job | None:
    """Touch the job (the reconciler sees progress) and hold its row until commit: the
    tasks of one job that finish together then commit one after the other, so the last
    one's count of open tasks sees every sibling's outcome. (An UPDATE, not SELECT ... FOR
    UPDATE, so that SQLite, whose writers take the database lock, serialises the same.)"""
    now = utcnow()
    touched = session.execute(
        update(Job)
        .where(Job.tenant_id == uuid.UUID(tenant_id), Job.id == uuid.UUID(job_id))
        .values(updated_at=now)
        .execution_options(synchronize_session=False)
    )
    if _rowcount(touched) != 1:
        return None
    return load_job(session, tenant_id, job_id)


def finish(
    session: Session,
    task_id: str,
    state: TaskState,
    *,
    started: datetime | None,
    error: str | None = None,
) -> bool:
    """running -> a final state, once."""
    now = utcnow()
    began = started or now
    done = session.execute(
        update(JobTask)
        .where(JobTask.id == uuid.UUID(task_id), JobTask.state.in_(OPEN_TASK_STATES))
        .values(state=state, error=error, finished_at=now, updated_at=now,
                duration_ms=int((now - began).total_seconds() * 1000))
        .execution_options(synchronize_session=False)
    )  # fmt: skip
    return _rowcount(done) == 1


def stage_open_count(session: Session, job: Job, stage: JobStage) -> int:
    return int(
        session.scalar(
            select(func.count()).select_from(JobTask).where(
                JobTask.tenant_id == job.tenant_id, JobTask.job_id == job.id,
                JobTask.stage == stage, JobTask.state.in_(OPEN_TASK_STATES),
            )
        ) or 0
    )  # fmt: skip


def advance(session: Session, job: Job, from_stage: JobStage, to_stage: JobStage) -> bool:
    """Move a running job to its next stage, once (the join)."""
    moved = session.execute(
        update(Job)
        .where(Job.id == job.id, Job.state == JobState.RUNNING, Job.stage == from_stage)
        .values(stage=to_stage, updated_at=utcnow(),
                checkpoints=dict(job.checkpoints) | {from_stage.value: "done"})
        .execution_options(synchronize_session=False)
    )  # fmt: skip
    return _rowcount(moved) == 1


def tasks_by_key(session: Session, job: Job, keys: Collection[str]) -> list[JobTask]:
    """The job's tasks with those keys, in key order."""
    return list(
        session.scalars(
            select(JobTask)
            .where(JobTask.tenant_id == job.tenant_id, JobTask.job_id == job.id,
                   JobTask.task_key.in_(list(keys)))
            .order_by(JobTask.task_key)
        )
    )  # fmt: skip


def stage_tasks(session: Session, job: Job, stage: JobStage) -> list[JobTask]:
    return list(
        session.scalars(
            select(JobTask)
            .where(JobTask.tenant_id == job.tenant_id, JobTask.job_id == job.id,
                   JobTask.stage == stage)
            .order_by(JobTask.task_key)
        )
    )  # fmt: skip


def end_job(
    session: Session, job: Job, state: JobState, *, result_key: str | None, error: str | None
) -> bool:
    """running -> a final state, once."""
    assert state in FINAL_JOB_STATES
    now = utcnow()
    ended = session.execute(
        update(Job)
        .where(Job.id == job.id, Job.state == JobState.RUNNING)
        .values(state=state, result_key=result_key, error=error, finished_at=now,
                updated_at=now, stage=JobStage.FINALIZE)
        .execution_options(synchronize_session=False)
    )  # fmt: skip
    return _rowcount(ended) == 1


def cancel_open_tasks(session: Session, job: Job) -> list[str]:
    """Mark the job's open tasks cancelled; returns their Celery task ids to revoke."""
    open_tasks = list(
        session.scalars(
            select(JobTask).where(
                JobTask.tenant_id == job.tenant_id, JobTask.job_id == job.id,
                JobTask.state.in_(OPEN_TASK_STATES),
            )
        )
    )  # fmt: skip
    session.execute(
        update(JobTask)
        .where(JobTask.id.in_([t.id for t in open_tasks]), JobTask.state.in_(OPEN_TASK_STATES))
        .values(state=TaskState.CANCELLED, finished_at=utcnow(), updated_at=utcnow())
        .execution_options(synchronize_session=False)
    )  # fmt: skip
    return [t.celery_task_id for t in open_tasks if t.celery_task_id]
