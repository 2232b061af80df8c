"""A job's life, in one place: its states, the compare-and-set transitions between them,
what each transition causes, and which message moves a job on.

::

    queued ──start──▶ running[datasets] ──join──▶ running[analysis] ──join──▶ running[finalize]
      │  ▲                 │                         │                          │
      │  └─ held ◀─┐       └───────── cancelled / failed (reconciler) ───────────┤
      │  (running-job limit, suspended tenant)                                   ▼
      └──▶ cancelled / failed                                  succeeded / partial / failed

A queued job may be *held*: it waits, queued, for a free slot of its tenant's running-job
limit or for its tenant to be resumed; the transaction that frees the slot (a job's end) or
resumes the tenant releases it. Every transition is a compare-and-set on the job row
(:mod:`celeriac.platform.jobs.repository`), so a redelivered message, a reconciler
re-dispatch and a racing sibling all find the work done and do nothing.

Each function runs in its caller's transaction and returns the :class:`Publication` s that
must follow it; the caller hands them to a :class:`~celeriac.platform.tasks.Publisher`
after the commit. The effects of a transition (events, usage records, a metric, a log line)
are written here, once: :func:`end_job` is the only way a job ends.

This module lives on the platform side because the API ends jobs too (cancel, tenant
deletion); the worker steps of each pool (``celeriac.workers.flow``) call it. See
``docs/job-lifecycle.md`` for the hop table.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from sqlalchemy import select
from sqlalchemy.orm import Session, object_session

from celeriac.platform import metrics
from celeriac.platform.db import run_after_commit
from celeriac.platform.dispatch import get_dispatcher
from celeriac.platform.jobs import events as job_events
from celeriac.platform.jobs import repository
from celeriac.platform.models import (
    FINAL_JOB_STATES,
    Job,
    JobStage,
    JobState,
    Priority,
    Tenant,
    TenantStatus,
)
from celeriac.platform.queues import Pool, TaskName, tenant_queues
from celeriac.platform.quotas.plans import tenant_limits
from celeriac.platform.tasks import Publication
from celeriac.platform.tenants.profile import tenant_profile
from celeriac.platform.usage.metrics import insert_usage, job_completed_rows
from celeriac.platform.webhooks import events

logger = logging.getLogger(__name__)

# Which state may follow which: queued -> failed / cancelled directly (a job that never
# started: cancelled by its tenant, ended by a deletion, or given up by the reconciler).
TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    JobState.QUEUED: frozenset({JobState.RUNNING, JobState.FAILED, JobState.CANCELLED}),
    JobState.RUNNING: frozenset(
        {JobState.SUCCEEDED, JobState.PARTIAL, JobState.FAILED, JobState.CANCELLED}
    ),
}
NEXT_STAGE: dict[JobStage, JobStage] = {
    JobStage.DATASETS: JobStage.ANALYSIS,
    JobStage.ANALYSIS: JobStage.FINALIZE,
}


def can_move(before: JobState, after: JobState) -> bool:
    """Whether the transition table allows ``before`` -> ``after``."""
    return after in TRANSITIONS.get(before, frozenset())


def sources_of(after: JobState) -> frozenset[JobState]:
    """The states a job may reach ``after`` from."""
    return frozenset(state for state, targets in TRANSITIONS.items() if after in targets)


class HoldReason(StrEnum):
    RUNNING_LIMIT = "running_limit"
    SUSPENDED = "suspended"


@dataclass(frozen=True)
class Held:
    """The job waits, queued, for its tenant (a running-job slot, or a resumption)."""

    reason: HoldReason
    limit: int | None = None


@dataclass(frozen=True)
class JobRef:
    """What a message of a job carries, and the queue it goes to."""

    tenant_id: str
    job_id: str
    tenant_slug: str
    band: Priority

    def kwargs(self, **extra: str) -> dict[str, str]:
        return {"tenant_id": self.tenant_id, "job_id": self.job_id, **extra}

    def message(
        self,
        name: TaskName,
        *,
        message_id: str | None = None,
        band: Priority | None = None,
        **extra: str,
    ) -> Publication:
        """The publication of task ``name`` for this job, in the job's band unless told
        (``message_id``: Celery's task id, when the caller chose it)."""
        return Publication(
            name, band or self.band, self.tenant_slug, self.kwargs(**extra), message_id
        )


# A tenant's slug never changes (the API cannot update it), so each process keeps the ones
# it has read; the bound only caps memory. A process that has not read it yet (a new pool
# process or pod) gets it from the tenant profile in the shared cache.
_SLUGS: dict[uuid.UUID, str] = {}
_SLUGS_MAX = 10_000


def tenant_slug(session: Session, tenant_id: uuid.UUID) -> str:
    slug = _SLUGS.get(tenant_id)
    if slug is None:
        found = tenant_profile(session, tenant_id).slug
        if len(_SLUGS) >= _SLUGS_MAX:
            _SLUGS.clear()
        slug = _SLUGS[tenant_id] = found
    return slug


def ref_of(session: Session, job: Job) -> JobRef:
    return JobRef(
        str(job.tenant_id), str(job.id), tenant_slug(session, job.tenant_id), job.priority
    )


def stage_message(ref: JobRef, state: JobState, stage: JobStage | None) -> Publication | None:
    """The message that moves a job on from where it is: a queued job's ``start_job``, a
    running stage's ``fan_out``, the finalize stage's ``finalize``; None for an ended job.
    The join and the reconciler ask this one function (start and the join then publish a
    running stage's compute tasks themselves instead of its ``fan_out``: ADR 0018)."""
    if state is JobState.QUEUED:
        return ref.message(TaskName.START_JOB)
    if state is not JobState.RUNNING:
        return None
    stage = stage or JobStage.DATASETS
    if stage is JobStage.FINALIZE:
        return ref.message(TaskName.FINALIZE)
    return ref.message(TaskName.FAN_OUT, stage=stage.value)


def _transition(job: Job, before: JobState | JobStage | None, after: JobState | JobStage) -> None:
    """Every transition passes here once, after its compare-and-set succeeded: the one
    place for what observes them (log line; metrics and live events hook in here)."""
    logger.info(
        "job %s -> %s",
        getattr(before, "value", before),
        after.value,
        extra={"job_id": str(job.id), "tenant_id": str(job.tenant_id)},
    )
    metrics.job_transitioned(job, after.value)
    job_events.announce_after_commit(object_session(job), job.id)


def compute_started(session: Session, job: Job, at: datetime) -> None:
    """A compute task of the running ``job`` was claimed at ``at`` (in the claim's
    transaction). The first one ends the job's queue wait: recorded once per job by a
    compare-and-set (a redelivered task, or a sibling claimed at the same moment, finds it
    done), and observed after the commit, so a rolled-back claim counts nothing."""
    if job.compute_started_at is not None or not repository.mark_compute_started(session, job, at):
        return
    job.compute_started_at = at
    band, submitted = job.priority.value, job.created_at
    run_after_commit(session, lambda: metrics.job_compute_started(band, submitted, at))


# --- queued -> running ---------------------------------------------------------------


@dataclass(frozen=True)
class Started:
    """A running job and the message that continues it."""

    job: Job
    next: Publication


def start(session: Session, tenant_id: str, job_id: str) -> Started | Held | None:
    """queued -> running at the datasets stage, if the tenant is active and has a free
    slot of its ``max_running_jobs`` quota; otherwise the job stays queued, held, until
    one of the tenant's jobs ends or the tenant is resumed (:func:`release_held`). A
    running job is returned as it is (a re-dispatch continues from its checkpoint); None
    for an ended or unknown job."""
    tenant, job_uuid = uuid.UUID(tenant_id), uuid.UUID(job_id)
    if repository.queued_job_id(session, tenant, job_uuid) is not None:
        status = repository.lock_tenant(session, tenant)
        if status is not TenantStatus.ACTIVE:
            repository.mark_held(session, tenant, job_uuid)
            return Held(HoldReason.SUSPENDED)
        limit = tenant_limits(session, tenant).max_running_jobs
        if repository.running_count(session, tenant) >= limit:
            repository.mark_held(session, tenant, job_uuid)
            return Held(HoldReason.RUNNING_LIMIT, limit)
        if repository.mark_running(session, tenant, job_uuid):
            # Not loaded before in this session (only its id was read): a fresh row.
            job = repository.load_job(session, tenant, job_uuid)
            assert job is not None
            _transition(job, JobState.QUEUED, JobState.RUNNING)
            return _started(session, job)
    job = repository.load_job(session, tenant, job_uuid)
    if job is None or job.state is not JobState.RUNNING:
        return None
    return _started(session, job)


def _started(session: Session, job: Job) -> Started:
    message = stage_message(ref_of(session, job), job.state, job.stage)
    assert message is not None
    return Started(job, message)


# --- running: stage by stage ---------------------------------------------------------


def advance_if_done(session: Session, job: Job | None, stage: JobStage) -> Publication | None:
    """If ``stage`` of the running job has no open task left, move the job to the next
    stage (once) and return the message that runs it. Called after each task's result is
    written, in the same transaction, so the last one always sees its stage done."""
    if job is None or job.state is not JobState.RUNNING:
        return None
    if repository.stage_open_count(session, job, stage) > 0:
        return None
    following = NEXT_STAGE[stage]
    if not repository.advance_stage(session, job, stage, following):
        return None
    _transition(job, stage, following)
    return stage_message(ref_of(session, job), JobState.RUNNING, following)


# --- the end -------------------------------------------------------------------------


@dataclass(frozen=True)
class Consumption:
    """What a job that ran to its end consumed (billed with ``jobs.completed``)."""

    compute_ms: int = 0
    stored_bytes: int = 0


def end_job(
    session: Session,
    job: Job,
    outcome: JobState,
    *,
    source: str,
    error: str | None = None,
    result_key: str | None = None,
    consumption: Consumption | None = None,
) -> list[Publication] | None:
    """End the job (compare-and-set from any state the table allows) with every effect
    of a job's end, in the caller's transaction: the ``job.<state>`` webhook event, the
    ``jobs.completed`` usage record (with what it consumed, when it ran to its end), and
    the release of the tenant's held jobs that its slot lets start. Returns what to
    publish after the commit (the released jobs' start; for a cancellation, the revocation
    of its open tasks), or None when the job had already ended (nothing was written)."""
    assert outcome in FINAL_JOB_STATES
    before = job.state
    ended = repository.end(
        session, job, outcome, sources=sources_of(outcome), result_key=result_key, error=error
    )
    if not ended:
        return None
    _transition(job, before, outcome)
    events.job_ended(session, job, outcome, error)
    if consumption is None:
        rows = job_completed_rows(job, outcome, source=source, with_consumption=False)
    else:
        rows = job_completed_rows(
            job,
            outcome,
            source=source,
            compute_ms=consumption.compute_ms,
            stored_bytes=consumption.stored_bytes,
        )
    insert_usage(session, rows)
    publications = release_held(session, job.tenant_id)
    if outcome is JobState.CANCELLED:
        # Ahead of the tenant's own queued work: its tasks are revoked before they run.
        publications.append(ref_of(session, job).message(TaskName.CANCEL_JOB, band=Priority.HIGH))
    return publications


def release_held(session: Session, tenant_id: uuid.UUID) -> list[Publication]:
    """The start of the tenant's held jobs that its free slots take now (none while the
    tenant is not active). Called in the transaction that ends one of its jobs or resumes
    it, so no free slot goes unnoticed; :func:`start` decides again (a slot taken
    meanwhile holds the job again)."""
    if repository.lock_tenant(session, tenant_id) is not TenantStatus.ACTIVE:
        return []
    # Most ends release nothing: one look for a held job (under the tenant's lock, so a
    # start holding one at this moment is seen) before the quota and the running count.
    if not repository.has_held_jobs(session, tenant_id):
        return []
    free = tenant_limits(session, tenant_id).max_running_jobs
    free -= repository.running_count(session, tenant_id)
    if free <= 0:
        return []
    return [
        ref_of(session, job).message(TaskName.START_JOB)
        for job in repository.take_held(session, tenant_id, free)
    ]


def redispatch(
    session: Session, job: Job, *, max_dispatches: int, lease_seconds: float
) -> list[Publication]:
    """The reconciler found the job lost (no progress and no message waiting): the message
    that moves it on from its last checkpoint, or, past ``max_dispatches``, its end as
    failed (queued -> failed is allowed directly). A job with a task still inside its
    lease (a run that may be going on, or one lost with a broker or database outage, which
    becomes due again when the lease ends) is waiting, not looping: the re-dispatch does not
    count towards ``max_dispatches``."""
    waiting_on_lease = repository.running_within_lease(session, job, lease_seconds) > 0
    if not waiting_on_lease and job.dispatch_count >= max_dispatches:
        error = f"stopped moving; re-dispatched {job.dispatch_count} times"
        return end_job(session, job, JobState.FAILED, source="reconciler", error=error) or []
    repository.count_dispatch(session, job, counted=not waiting_on_lease)
    message = stage_message(ref_of(session, job), job.state, job.stage)
    return [message] if message is not None else []


# --- the tenant's status -------------------------------------------------------------


def end_tenant_jobs(session: Session, tenant_id: uuid.UUID) -> list[Publication]:
    """A deleted tenant's queued and running jobs end ``cancelled`` (with their events and
    records), in the deleting transaction."""
    publications: list[Publication] = []
    for job in repository.open_jobs(session, tenant_id):
        publications += (
            end_job(
                session,
                job,
                JobState.CANCELLED,
                source="tenant_deleted",
                error="the tenant was deleted",
            )
            or []
        )
    return publications


def tenant_status_changed(
    session: Session, tenant: Tenant, status: TenantStatus
) -> list[Publication]:
    """A tenant suspended or resumed (in the transaction that changed it). Suspension holds
    its work: after the commit the fair dispatcher stops releasing its queued tasks (tasks
    already running finish), and :func:`start` holds its queued jobs. Resumption releases
    its backlog and returns the start of the jobs that were held."""
    slug = tenant.slug
    run_after_commit(session, lambda: _mark_suspended(slug, status is TenantStatus.SUSPENDED))
    if status is TenantStatus.ACTIVE:
        return release_held(session, tenant.id)
    return []


def _mark_suspended(slug: str, suspended: bool) -> None:
    dispatcher = get_dispatcher()
    if dispatcher is None:
        return
    try:
        dispatcher.set_suspended(slug, suspended)
        if not suspended:
            # A suspended tenant's queues left the rings when the release script found them
            # held: they join again, and its backlog is released as slots free.
            for pool in Pool:
                dispatcher.release(pool, tenant_queues(pool, slug))
    except Exception:  # the broker is briefly away: beat's reconcile rebuilds the set
        logger.exception(
            "could not mark tenant %s %s", slug, "suspended" if suspended else "resumed"
        )


def suspended_slugs(session: Session) -> list[str]:
    """The slugs of every suspended tenant (the dispatcher's set, rebuilt by beat)."""
    return list(session.scalars(select(Tenant.slug).where(Tenant.status == TenantStatus.SUSPENDED)))
