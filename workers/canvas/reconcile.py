"""The reconciler: jobs that stopped moving are re-dispatched from their last checkpoint.

The database, not the broker, is the source of truth (Redis without AOF loses queued and
unacked messages on a restart; a FLUSHDB loses everything). A queued or running job whose
``updated_at`` is older than ``jobs.stall_seconds`` is re-dispatched: queued -> start_job,
running -> its current stage again (only open tasks are republished, and every step is a
compare-and-set, so a duplicate does nothing). A tenant whose queues still hold messages
is left alone: its work is waiting, not lost. A job re-dispatched more than
``jobs.max_dispatches`` times is failed with a clear error instead of looping.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from sqlalchemy import select, update

from celeriac.platform.db import transaction
from celeriac.platform.dispatch import get_dispatcher
from celeriac.platform.models import Job, JobStage, JobState, Tenant, utcnow
from celeriac.platform.settings import get_settings
from celeriac.platform.tasks import publish
from celeriac.platform.usage.metrics import record_job_completed
from celeriac.platform.webhooks import events
from celeriac.workers.canvas import state, steps

logger = logging.getLogger(__name__)


def _tenants_with_backlog() -> set[str]:
    dispatcher = get_dispatcher()
    if dispatcher is None:
        return set()
    return {queue.tenant for queue in dispatcher.tenant_backlogs()}


def reconcile(send: steps.Send = publish, limit: int = 500) -> int:
    """Re-dispatch stalled jobs; returns how many were re-dispatched or failed."""
    jobs = get_settings().jobs
    cutoff = utcnow() - timedelta(seconds=jobs.stall_seconds)
    waiting = _tenants_with_backlog()
    with transaction() as session:
        rows = session.execute(
            select(Job.id, Job.tenant_id, Tenant.slug)
            .join(Tenant, Tenant.id == Job.tenant_id)
            .where(
                Job.state.in_([JobState.QUEUED, JobState.RUNNING]),
                Job.updated_at < cutoff,
                # A held job waits for its tenant's slot, not for a lost message.
                Job.held_since.is_(None),
            )
            .order_by(Job.updated_at)
            .limit(limit)
        ).all()
    handled = 0
    for job_id, tenant_id, slug in rows:
        if slug in waiting:
            continue
        handled += _redispatch(str(tenant_id), str(job_id), send)
    return handled + release_stranded(send)


def release_stranded(send: steps.Send = publish) -> int:
    """Safety net for the running-job limit: start the held jobs of every tenant that has
    a free slot (an end whose release was lost: a crash after its commit, a failed
    publish). Returns how many were released."""
    with transaction() as session:
        tenants = state.tenants_with_held_jobs(session)
    released = 0
    for tenant_id in tenants:
        with transaction() as session:
            refs = steps.release_held(session, tenant_id)
        steps.start_released(refs, send)
        released += len(refs)
    return released


def _redispatch(tenant_id: str, job_id: str, send: steps.Send) -> int:
    jobs = get_settings().jobs
    released: list[steps.JobRef] | None = None
    with transaction() as session:
        job = state.load_job(session, tenant_id, job_id)
        if job is None or job.state not in (JobState.QUEUED, JobState.RUNNING):
            return 0
        if job.dispatch_count >= jobs.max_dispatches:
            if job.state is JobState.QUEUED:
                session.execute(update(Job).where(Job.id == job.id).values(state=JobState.RUNNING))
                session.refresh(job)
            error = f"stopped moving; re-dispatched {job.dispatch_count} times"
            if state.end_job(session, job, JobState.FAILED, result_key=None, error=error):
                events.job_ended(session, job, JobState.FAILED, error)
                record_job_completed(session, job, JobState.FAILED, source="reconciler")
            released = steps.release_held(session, job.tenant_id)
        else:
            session.execute(
                update(Job)
                .where(Job.id == job.id)
                .values(dispatch_count=Job.dispatch_count + 1, updated_at=utcnow())
            )
        queued, stage = job.state is JobState.QUEUED, job.stage
        ref = steps.ref_of(session, job)
    if released is not None:
        steps.start_released(released, send)
        return 1
    logger.warning("re-dispatching a stalled job",
                   extra={"job_id": job_id, "tenant_id": tenant_id,
                          "stage": stage.value if stage else None})  # fmt: skip
    if queued:
        send(steps.START_JOB, band=ref.band, tenant_slug=ref.tenant_slug, kwargs=ref.kwargs())
    elif stage is JobStage.FINALIZE:
        send(steps.FINALIZE, band=ref.band, tenant_slug=ref.tenant_slug, kwargs=ref.kwargs())
    else:
        stage_name = (stage or JobStage.DATASETS).value
        send(steps.FAN_OUT, band=ref.band, tenant_slug=ref.tenant_slug,
             kwargs=ref.kwargs(stage=stage_name))  # fmt: skip
    return 1
