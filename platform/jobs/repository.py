"""Every statement on ``jobs`` and ``job_tasks``: the API's reads, the lifecycle's
compare-and-set transitions and the workers' task bookkeeping.

Each function takes the tenant it works for and starts its query from it, so a job of
another tenant is simply not found. The few statements that beat runs across every tenant
are named ``unscoped_*`` so that they cannot be written by accident. Every function takes
the caller's session; the task or request that owns the transaction commits.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Collection, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, Protocol

from sqlalchemy import (
    Connection,
    CursorResult,
    Float,
    String,
    case,
    func,
    insert,
    select,
    tuple_,
    type_coerce,
    update,
)
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value

from celeriac.platform.db import upsert_insert
from celeriac.platform.models import (
    FINAL_JOB_STATES,
    Job,
    JobStage,
    JobState,
    JobTask,
    Priority,
    TaskState,
    Tenant,
    TenantStatus,
    utcnow,
)
from celeriac.platform.repository import TenantRepository

OPEN_TASK_STATES = (TaskState.PENDING, TaskState.RUNNING)


class JobRepository(TenantRepository[Job]):
    """The API's view of one tenant's jobs (get, pages)."""

    model = Job
    not_found = "job"


class PlannedTaskRow(Protocol):
    """What the repository needs of a planned task to insert its row."""

    @property
    def key(self) -> str: ...
    @property
    def stage(self) -> JobStage: ...
    @property
    def plugin(self) -> str: ...
    @property
    def plugin_version(self) -> str: ...
    @property
    def chunk(self) -> int | None: ...
    @property
    def input_key(self) -> str: ...
    @property
    def output_key(self) -> str: ...


def _rowcount(result: object) -> int:
    assert isinstance(result, CursorResult)
    return int(result.rowcount)


def _uuid(value: uuid.UUID | str) -> uuid.UUID:
    return value if isinstance(value, uuid.UUID) else uuid.UUID(value)


# --- jobs ------------------------------------------------------------------------------


def insert_jobs(conn: Connection, rows: Sequence[Mapping[str, Any]]) -> None:
    """The ingest writer's multi-row insert (Core, keyed by column name)."""
    conn.execute(insert(Job.__table__), list(rows))  # type: ignore[arg-type]


def load_job(session: Session, tenant_id: uuid.UUID | str, job_id: uuid.UUID | str) -> Job | None:
    return session.scalars(
        select(Job).where(Job.tenant_id == _uuid(tenant_id), Job.id == _uuid(job_id))
    ).one_or_none()


def queued_job_id(session: Session, tenant_id: uuid.UUID, job_id: uuid.UUID) -> uuid.UUID | None:
    return session.scalar(
        select(Job.id).where(
            Job.tenant_id == tenant_id, Job.id == job_id, Job.state == JobState.QUEUED
        )
    )


def lock_tenant(session: Session, tenant_id: uuid.UUID) -> TenantStatus | None:
    """Serialise, per tenant, the decisions that count its running jobs (start, release):
    two starts at the same moment cannot both take the last free slot. NO KEY UPDATE
    leaves the foreign-key checks of concurrent inserts (KEY SHARE) unblocked; SQLite
    (embedded mode) serialises writers anyway. Returns the tenant's status as locked."""
    status = session.scalar(
        select(Tenant.status).where(Tenant.id == tenant_id).with_for_update(key_share=True)
    )
    return TenantStatus(status) if status is not None else None


def running_count(session: Session, tenant_id: uuid.UUID) -> int:
    return int(
        session.scalar(
            select(func.count())
            .select_from(Job)
            .where(Job.tenant_id == tenant_id, Job.state == JobState.RUNNING)
        )
        or 0
    )


def mark_held(session: Session, tenant_id: uuid.UUID, job_id: uuid.UUID) -> None:
    """A queued job waits (held) for its tenant: a running-job slot, or its resumption."""
    now = utcnow()
    session.execute(
        update(Job)
        .where(Job.tenant_id == tenant_id, Job.id == job_id, Job.state == JobState.QUEUED)
        .values(held_since=func.coalesce(Job.held_since, now), updated_at=now)
        .execution_options(synchronize_session=False)
    )


def mark_running(session: Session, tenant_id: uuid.UUID, job_id: uuid.UUID) -> bool:
    """queued -> running at the datasets stage, once."""
    now = utcnow()
    started = session.execute(
        update(Job)
        .where(Job.tenant_id == tenant_id, Job.id == job_id, Job.state == JobState.QUEUED)
        .values(
            state=JobState.RUNNING,
            stage=JobStage.DATASETS,
            started_at=now,
            updated_at=now,
            held_since=None,
        )
        .execution_options(synchronize_session=False)
    )
    return _rowcount(started) == 1


def mark_compute_started(session: Session, job: Job, at: datetime) -> bool:
    """Record the job's first compute start, once: False when a sibling task (or an
    earlier delivery of this one) already did."""
    marked = session.execute(
        update(Job)
        .where(Job.tenant_id == job.tenant_id, Job.id == job.id, Job.compute_started_at.is_(None))
        .values(compute_started_at=at)
        .execution_options(synchronize_session=False)
    )
    return _rowcount(marked) == 1


_BAND_ORDER = case(
    (Job.priority == Priority.HIGH, 0), (Job.priority == Priority.NORMAL, 1), else_=2
)


def take_held(session: Session, tenant_id: uuid.UUID, limit: int) -> list[Job]:
    """Up to ``limit`` of the tenant's held jobs (high band first, then the oldest),
    unmarked: each is queued again, waiting for its start_job."""
    jobs = list(
        session.scalars(
            select(Job)
            .where(
                Job.tenant_id == tenant_id,
                Job.state == JobState.QUEUED,
                Job.held_since.is_not(None),
            )
            .order_by(_BAND_ORDER, Job.created_at, Job.id)
            .limit(limit)
        )
    )
    if jobs:
        session.execute(
            update(Job)
            .where(
                Job.tenant_id == tenant_id,
                Job.id.in_([j.id for j in jobs]),
                Job.state == JobState.QUEUED,
            )
            .values(held_since=None, updated_at=utcnow())
            .execution_options(synchronize_session=False)
        )
    return jobs


def has_held_jobs(session: Session, tenant_id: uuid.UUID) -> bool:
    """Whether any of the tenant's jobs is held."""
    return (
        session.scalar(
            select(Job.id)
            .where(
                Job.tenant_id == tenant_id,
                Job.state == JobState.QUEUED,
                Job.held_since.is_not(None),
            )
            .limit(1)
        )
        is not None
    )


def touch_job(session: Session, tenant_id: uuid.UUID | str, job_id: uuid.UUID | str) -> Job | None:
    """Touch the job (the reconciler sees progress) and hold its row until commit: the
    tasks of one job that finish together then commit one after the other, so the last
    one's count of open tasks sees every sibling's outcome. (An UPDATE, not SELECT ... FOR
    UPDATE, so that SQLite, whose writers take the database lock, serialises the same.)"""
    # One statement: the touched row comes back as the job (UPDATE ... RETURNING), not
    # read by a second SELECT (issue 16: finish is on every compute task's path).
    return session.scalars(
        update(Job)
        .where(Job.tenant_id == _uuid(tenant_id), Job.id == _uuid(job_id))
        .values(updated_at=utcnow())
        .returning(Job)
        .execution_options(synchronize_session=False)
    ).one_or_none()


def advance_stage(session: Session, job: Job, from_stage: JobStage, to_stage: JobStage) -> bool:
    """running at ``from_stage`` -> running at ``to_stage``, once (the join). The loaded
    ``job`` shows the new stage afterwards (as committed, not as a change to flush): the
    transaction that joined a stage goes on with the next one (start, the join)."""
    checkpoints = dict(job.checkpoints) | {from_stage.value: "done"}
    moved = session.execute(
        update(Job)
        .where(
            Job.tenant_id == job.tenant_id,
            Job.id == job.id,
            Job.state == JobState.RUNNING,
            Job.stage == from_stage,
        )
        .values(stage=to_stage, updated_at=utcnow(), checkpoints=checkpoints)
        .execution_options(synchronize_session=False)
    )
    if _rowcount(moved) != 1:
        return False
    set_committed_value(job, "stage", to_stage)
    set_committed_value(job, "checkpoints", checkpoints)
    return True


def end(
    session: Session,
    job: Job,
    state: JobState,
    *,
    sources: Collection[JobState],
    result_key: str | None,
    error: str | None,
) -> bool:
    """One of ``sources`` -> the final ``state``, once (compare-and-set). A job that ran
    ends at the finalize stage; one that never started keeps no stage."""
    now = utcnow()
    ended = session.execute(
        update(Job)
        .where(Job.tenant_id == job.tenant_id, Job.id == job.id, Job.state.in_(list(sources)))
        .values(
            state=state,
            result_key=result_key,
            error=error,
            finished_at=now,
            updated_at=now,
            held_since=None,
            stage=case((Job.state == JobState.RUNNING, JobStage.FINALIZE), else_=Job.stage),
        )
        .execution_options(synchronize_session=False)
    )
    return _rowcount(ended) == 1


def count_dispatch(session: Session, job: Job, *, counted: bool = True) -> None:
    """The reconciler re-dispatches the job once more (it counts as progress; towards its
    give-up only when ``counted``)."""
    session.execute(
        update(Job)
        .where(Job.tenant_id == job.tenant_id, Job.id == job.id)
        .values(dispatch_count=Job.dispatch_count + int(counted), updated_at=utcnow())
        .execution_options(synchronize_session=False)
    )


def open_jobs(session: Session, tenant_id: uuid.UUID) -> list[Job]:
    """The tenant's queued and running jobs (to end them when the tenant is deleted)."""
    return list(
        session.scalars(
            select(Job).where(
                Job.tenant_id == tenant_id, Job.state.in_([JobState.QUEUED, JobState.RUNNING])
            )
        )
    )


def unscoped_stalled_jobs(
    session: Session, *, before: datetime, limit: int
) -> list[tuple[uuid.UUID, uuid.UUID, str]]:
    """Beat, across tenants: (tenant id, job id, tenant slug) of the queued or running jobs
    of active tenants unchanged since ``before``, oldest first. Held jobs wait for their
    tenant, and a suspended tenant's jobs for its resumption, not for a lost message."""
    rows = session.execute(
        select(Job.tenant_id, Job.id, Tenant.slug)
        .join(Tenant, Tenant.id == Job.tenant_id)
        .where(
            Job.state.in_([JobState.QUEUED, JobState.RUNNING]),
            Job.updated_at < before,
            Job.held_since.is_(None),
            Tenant.status == TenantStatus.ACTIVE,
        )
        .order_by(Job.updated_at)
        .limit(limit)
    )
    return [(row[0], row[1], row[2]) for row in rows]


def unscoped_tenants_with_held_jobs(session: Session, limit: int = 1000) -> list[uuid.UUID]:
    """Beat, across tenants: the tenants that have held jobs."""
    return list(
        session.scalars(
            select(Job.tenant_id)
            .where(Job.state == JobState.QUEUED, Job.held_since.is_not(None))
            .distinct()
            .limit(limit)
        )
    )


# --- tasks -----------------------------------------------------------------------------


def ensure_tasks(
    session: Session, job: Job, planned: Sequence[PlannedTaskRow]
) -> tuple[list[JobTask], set[uuid.UUID]]:
    """Insert the planned tasks that do not exist yet, each with the id of the message that
    will run it; return the stage's open tasks and the ids of those inserted now."""
    inserted: set[uuid.UUID] = set()
    if planned:
        now = utcnow()
        rows = [
            {
                "id": uuid.uuid4(),
                "tenant_id": job.tenant_id,
                "job_id": job.id,
                "task_key": p.key,
                "stage": p.stage,
                "plugin": p.plugin,
                "plugin_version": p.plugin_version,
                "chunk": p.chunk,
                "input_key": p.input_key,
                "output_key": p.output_key,
                "state": TaskState.PENDING,
                "attempts": 0,
                "created_at": now,
                "updated_at": now,
                "celery_task_id": str(uuid.uuid4()),
            }
            for p in planned
        ]
        inserted = set(
            session.scalars(
                upsert_insert(session, JobTask)
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


def running_within_lease(session: Session, job: Job, lease_seconds: float) -> int:
    """How many of the job's tasks are running and began less than ``lease_seconds`` ago."""
    since = utcnow() - timedelta(seconds=lease_seconds)
    return int(
        session.scalar(
            select(func.count())
            .select_from(JobTask)
            .where(
                JobTask.tenant_id == job.tenant_id,
                JobTask.job_id == job.id,
                JobTask.state == TaskState.RUNNING,
                func.coalesce(JobTask.started_at, JobTask.updated_at) >= since,
            )
        )
        or 0
    )


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


def claim_task(
    session: Session,
    tenant_id: str,
    task_id: str,
    message_id: str,
    lease_seconds: float,
    ready: Callable[[JobTask, Job], bool] | None = None,
) -> tuple[JobTask, Job] | None:
    """Claim the task for ``message_id``: -> running with one more attempt, if its job
    is still running, :func:`claimable` allows it and ``ready`` (the tasks it runs after
    have ended) holds. Returns the task as claimed and its job."""
    tenant = uuid.UUID(tenant_id)
    # The task and its job in one statement (issue 16: the claim is on every compute
    # task's path).
    found = session.execute(
        select(JobTask, Job)
        .join(Job, (Job.tenant_id == JobTask.tenant_id) & (Job.id == JobTask.job_id))
        .where(JobTask.tenant_id == tenant, JobTask.id == uuid.UUID(task_id))
    ).one_or_none()
    if found is None:
        return None
    task, job = found
    if not claimable(task, message_id, lease_seconds) or job.state is not JobState.RUNNING:
        return None
    if ready is not None and not ready(task, job):
        return None  # left pending: the last of the tasks it waits for publishes it
    now = utcnow()
    claimed = session.execute(
        update(JobTask)
        .where(
            JobTask.tenant_id == tenant,
            JobTask.id == task.id,
            JobTask.state.in_(OPEN_TASK_STATES),
            JobTask.attempts == task.attempts,
        )
        .values(
            state=TaskState.RUNNING,
            attempts=task.attempts + 1,
            started_at=now,
            updated_at=now,
            celery_task_id=message_id,
        )
        .execution_options(synchronize_session=False)
    )
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
            .where(
                JobTask.tenant_id == task.tenant_id,
                JobTask.id == task.id,
                JobTask.state.in_(OPEN_TASK_STATES),
            )
            .values(celery_task_id=ids[task.id])
            .execution_options(synchronize_session=False)
        )
    return ids


def finish_task(
    session: Session,
    tenant_id: uuid.UUID | str,
    task_id: str,
    state: TaskState,
    *,
    started: datetime | None,
    error: str | None = None,
) -> bool:
    """running -> a final task state, once."""
    now = utcnow()
    began = started or now
    done = session.execute(
        update(JobTask)
        .where(
            JobTask.tenant_id == _uuid(tenant_id),
            JobTask.id == uuid.UUID(task_id),
            JobTask.state.in_(OPEN_TASK_STATES),
        )
        .values(
            state=state,
            error=error,
            finished_at=now,
            updated_at=now,
            duration_ms=int((now - began).total_seconds() * 1000),
        )
        .execution_options(synchronize_session=False)
    )
    return _rowcount(done) == 1


def set_error_detail(
    session: Session, tenant_id: uuid.UUID | str, task_id: uuid.UUID | str, detail: bytes | None
) -> None:
    """A task's error message, encrypted (celeriac.platform.jobs.task_errors)."""
    session.execute(
        update(JobTask)
        .where(JobTask.tenant_id == _uuid(tenant_id), JobTask.id == _uuid(task_id))
        .values(error_detail=detail)
        .execution_options(synchronize_session=False)
    )


def stage_open_count(session: Session, job: Job, stage: JobStage) -> int:
    return int(
        session.scalar(
            select(func.count())
            .select_from(JobTask)
            .where(
                JobTask.tenant_id == job.tenant_id,
                JobTask.job_id == job.id,
                JobTask.stage == stage,
                JobTask.state.in_(OPEN_TASK_STATES),
            )
        )
        or 0
    )


def tasks_by_key(session: Session, job: Job, keys: Collection[str]) -> list[JobTask]:
    """The job's tasks with those keys, in key order."""
    return list(
        session.scalars(
            select(JobTask)
            .where(
                JobTask.tenant_id == job.tenant_id,
                JobTask.job_id == job.id,
                JobTask.task_key.in_(list(keys)),
            )
            .order_by(JobTask.task_key)
        )
    )


def stage_tasks(session: Session, job: Job, stage: JobStage) -> list[JobTask]:
    return list(
        session.scalars(
            select(JobTask)
            .where(
                JobTask.tenant_id == job.tenant_id, JobTask.job_id == job.id, JobTask.stage == stage
            )
            .order_by(JobTask.task_key)
        )
    )


class TaskOutcome(Protocol):
    """What finalize reads of each task (a row of :func:`task_outcomes`)."""

    @property
    def task_key(self) -> str: ...
    @property
    def stage(self) -> JobStage: ...
    @property
    def plugin(self) -> str: ...
    @property
    def chunk(self) -> int | None: ...
    @property
    def state(self) -> TaskState: ...
    @property
    def error(self) -> str | None: ...
    @property
    def output_key(self) -> str | None: ...
    @property
    def duration_ms(self) -> int | None: ...


def task_outcomes(session: Session, job: Job) -> list[TaskOutcome]:
    """Every task of the job as a row of what finalize needs, the datasets stage first,
    then in key order: one statement and no ORM objects (finalize is on every job's
    path)."""
    rows = session.execute(
        select(
            JobTask.task_key,
            JobTask.stage,
            JobTask.plugin,
            JobTask.chunk,
            JobTask.state,
            JobTask.error,
            JobTask.output_key,
            JobTask.duration_ms,
        ).where(JobTask.tenant_id == job.tenant_id, JobTask.job_id == job.id)
    ).all()
    return sorted(rows, key=lambda r: (r.stage is not JobStage.DATASETS, r.task_key))


def cancel_open_tasks(session: Session, job: Job) -> list[str]:
    """Mark the job's open tasks cancelled; returns their Celery task ids to revoke."""
    open_tasks = list(
        session.scalars(
            select(JobTask).where(
                JobTask.tenant_id == job.tenant_id,
                JobTask.job_id == job.id,
                JobTask.state.in_(OPEN_TASK_STATES),
            )
        )
    )
    if open_tasks:
        session.execute(
            update(JobTask)
            .where(
                JobTask.tenant_id == job.tenant_id,
                JobTask.id.in_([t.id for t in open_tasks]),
                JobTask.state.in_(OPEN_TASK_STATES),
            )
            .values(state=TaskState.CANCELLED, finished_at=utcnow(), updated_at=utcnow())
            .execution_options(synchronize_session=False)
        )
    return [t.celery_task_id for t in open_tasks if t.celery_task_id]


def task_counts(
    session: Session, tenant_id: uuid.UUID, job_id: uuid.UUID
) -> list[tuple[JobStage, TaskState, int]]:
    """How many of the job's tasks are in each (stage, state)."""
    rows = session.execute(
        select(JobTask.stage, JobTask.state, func.count())
        .where(JobTask.tenant_id == tenant_id, JobTask.job_id == job_id)
        .group_by(JobTask.stage, JobTask.state)
    ).all()
    return [(row[0], row[1], int(row[2])) for row in rows]


FAILED_TASKS_SHOWN = 100  # failed tasks listed in a job's detail


def failed_tasks(
    session: Session, tenant_id: uuid.UUID, job_id: uuid.UUID, limit: int = FAILED_TASKS_SHOWN
) -> list[JobTask]:
    """The job's failed and timed-out tasks, in stage, plugin and chunk order."""
    return list(
        session.scalars(
            select(JobTask)
            .where(
                JobTask.tenant_id == tenant_id,
                JobTask.job_id == job_id,
                JobTask.state.in_([TaskState.FAILED, TaskState.TIMED_OUT]),
            )
            .order_by(JobTask.stage, JobTask.plugin, JobTask.chunk)
            .limit(limit)
        )
    )


# --- metrics (celeriac.platform.ops.tenant_metrics) --------------------------------------


def _seconds_between(session: Session, start: Any, end: Any) -> Any:
    """``end - start`` in seconds, in PostgreSQL's dialect or SQLite's."""
    if session.get_bind().dialect.name == "sqlite":
        return (func.julianday(end) - func.julianday(start)) * 86400.0
    return func.extract("epoch", end - start)


_FINAL_STATES = (JobState.SUCCEEDED, JobState.PARTIAL, JobState.FAILED, JobState.CANCELLED)


def finished_counts(session: Session, tenant_id: uuid.UUID) -> dict[str, int]:
    """The tenant's jobs in each final state."""
    rows = session.execute(
        select(Job.state, func.count())
        .where(Job.tenant_id == tenant_id, Job.state.in_(_FINAL_STATES))
        .group_by(Job.state)
    )
    return {JobState(state).value: int(count) for state, count in rows}


def duration_histogram(
    session: Session, tenant_id: uuid.UUID, bounds: Sequence[float]
) -> tuple[int, float, list[int]]:
    """(count, sum of seconds, cumulative count per bound) of the submission-to-end time
    of the tenant's ended jobs, counted by the database in one row."""
    seconds = _seconds_between(session, Job.created_at, Job.finished_at)
    row = session.execute(
        select(
            func.count(),
            func.coalesce(func.sum(seconds), 0.0),
            *[func.sum(case((seconds <= bound, 1), else_=0)) for bound in bounds],
        ).where(
            Job.tenant_id == tenant_id,
            Job.state.in_(_FINAL_STATES),
            Job.finished_at.is_not(None),
        )
    ).one()
    return int(row[0]), float(row[1] or 0.0), [int(n or 0) for n in row[2:]]


def unscoped_running_counts(session: Session) -> dict[uuid.UUID, int]:
    """Operators' view, across tenants: running jobs per tenant."""
    rows = session.execute(
        select(Job.tenant_id, func.count())
        .where(Job.state == JobState.RUNNING)
        .group_by(Job.tenant_id)
    )
    return {tenant: int(count) for tenant, count in rows}


def unscoped_finished_counts(session: Session) -> dict[tuple[uuid.UUID, str], int]:
    """Operators' view, across tenants: jobs per tenant and final state."""
    rows = session.execute(
        select(Job.tenant_id, Job.state, func.count())
        .where(Job.state.in_(_FINAL_STATES))
        .group_by(Job.tenant_id, Job.state)
    )
    return {(tenant, JobState(state).value): int(count) for tenant, state, count in rows}


# --- live events, data deletion and retention (platform/jobs/events.py, data.py) ---------

JobKey = tuple[uuid.UUID, uuid.UUID]  # (tenant id, job id)


def job_states(session: Session, keys: Collection[JobKey]) -> list[Any]:
    """(tenant_id, id, state, started_at) of each of these jobs that exists."""
    return list(
        session.execute(
            select(Job.tenant_id, Job.id, Job.state, Job.started_at).where(
                tuple_(Job.tenant_id, Job.id).in_(list(keys))
            )
        ).all()
    )


def task_state_counts(session: Session, keys: Collection[JobKey]) -> list[Any]:
    """(tenant_id, job_id, stage, state, count) of these jobs' tasks."""
    return list(
        session.execute(
            select(JobTask.tenant_id, JobTask.job_id, JobTask.stage, JobTask.state, func.count())
            .where(tuple_(JobTask.tenant_id, JobTask.job_id).in_(list(keys)))
            .group_by(JobTask.tenant_id, JobTask.job_id, JobTask.stage, JobTask.state)
        ).all()
    )


def unscoped_tenants_with_jobs_finished_before(
    session: Session, before: datetime
) -> list[uuid.UUID]:
    """Beat's retention sweep, across tenants: those (not deleted) with a finished job
    older than ``before`` whose data is still stored."""
    return list(
        session.scalars(
            select(Job.tenant_id)
            .distinct()
            .join(Tenant, Tenant.id == Job.tenant_id)
            .where(
                Job.finished_at < before,
                Job.data_deleted_at.is_(None),
                Tenant.status != TenantStatus.DELETED,
            )
            .order_by(Job.tenant_id)
        ).all()
    )


def lock_jobs_finished_before(
    session: Session, tenant_id: uuid.UUID, before: datetime, limit: int
) -> list[Job]:
    """The tenant's oldest finished jobs whose data is stored and older than ``before``,
    locked (others' sweeps skip them)."""
    return list(
        session.scalars(
            select(Job)
            .where(
                Job.tenant_id == tenant_id,
                Job.state.in_(FINAL_JOB_STATES),
                Job.finished_at < before,
                Job.data_deleted_at.is_(None),
            )
            .order_by(Job.finished_at)
            .limit(limit)
            .with_for_update(skip_locked=True)
        ).all()
    )


def mark_data_deleted(
    session: Session, tenant_id: uuid.UUID, job_id: uuid.UUID, when: datetime
) -> None:
    """The job's blobs are gone; so is its data key (the crypto-shred of any copy)."""
    session.execute(
        update(Job)
        .where(Job.tenant_id == tenant_id, Job.id == job_id)
        .values(data_deleted_at=when, result_key=None, data_key=None)
        .execution_options(synchronize_session=False)
    )


def job_data_key(conn: Connection, tenant_id: uuid.UUID, job_id: uuid.UUID) -> Any | None:
    """The job's wrapped data key and ``data_deleted_at`` (a row), None for no such job."""
    return conn.execute(
        select(Job.data_key, Job.data_deleted_at).where(
            Job.tenant_id == tenant_id, Job.id == job_id
        )
    ).one_or_none()


def destroy_data_keys(session: Session, tenant_id: uuid.UUID) -> int:
    """A deleted tenant's job keys (its KMS key is destroyed already: this is the second
    lock on the same door). Returns how many were set."""
    result = session.execute(
        update(Job)
        .where(Job.tenant_id == tenant_id, Job.data_key.is_not(None))
        .values(data_key=None)
        .execution_options(synchronize_session=False)
    )
    return _rowcount(result)


def timeline_tasks(
    session: Session, tenant_id: uuid.UUID, job_id: uuid.UUID, limit: int
) -> list[Any]:
    """Up to ``limit`` of the job's tasks, those that started first first, as rows of the
    columns the console's timeline draws: stage, plugin, chunk, state, attempts, start,
    end, duration_ms, error, with the stage and state as their values and start and end as
    epoch seconds (floats). A 1,000-task job is drawn on every re-read of its page, so
    nothing here goes through a Python result processor: executed on the connection, past
    the ORM (whose result handling cost more than the query), and without the enum and
    ``UTCDateTime`` conversions (a third of the remaining read time); the database turns
    the times into seconds."""
    conn = session.connection()
    if conn.dialect.name == "sqlite":  # stored as UTC text; julianday() reads it

        def seconds(column: Any) -> Any:
            return (func.julianday(column) - 2440587.5) * 86400.0

    else:

        def seconds(column: Any) -> Any:
            # date_part is double precision; EXTRACT's numeric cost 0.8 ms per 1,000 rows
            return type_coerce(func.date_part("epoch", column), Float)

    return list(
        conn.execute(
            select(
                type_coerce(JobTask.stage, String),
                JobTask.plugin,
                JobTask.chunk,
                type_coerce(JobTask.state, String),
                JobTask.attempts,
                seconds(JobTask.started_at),
                seconds(JobTask.finished_at),
                JobTask.duration_ms,
                JobTask.error,
            )
            .where(JobTask.tenant_id == tenant_id, JobTask.job_id == job_id)
            .order_by(JobTask.started_at.asc().nulls_last(), JobTask.task_key)
            .limit(limit)
        ).all()
    )
