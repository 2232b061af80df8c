"""Orchestration pool (gevent): starting jobs, cancelling their tasks, and the reconciler
that finds lost jobs. Decides what runs next; computes nothing.

The reconciler: the database, not the broker, is the source of truth (Redis without AOF
loses queued and unacked messages on a restart; a FLUSHDB loses everything). A queued or
running job unchanged for ``jobs.stall_seconds`` is lost when no message of it waits in a
queue (the dispatcher looks in its tenant's queues and the pools' ready queues): it is
found by its own lack of progress, whatever else its tenant has queued. A lost job is
re-dispatched from its last checkpoint (every step is a compare-and-set, so a duplicate does
nothing); one re-dispatched more than ``jobs.max_dispatches`` times is failed with a clear
error instead of looping.
"""

from __future__ import annotations

import logging
import uuid
from datetime import timedelta

from celeriac.platform.db import transaction
from celeriac.platform.dispatch import get_dispatcher
from celeriac.platform.jobs import lifecycle, repository
from celeriac.platform.models import JobStage, utcnow
from celeriac.platform.settings import get_settings
from celeriac.platform.tasks import Publisher, default_publisher
from celeriac.workers.flow import distribution, plan

logger = logging.getLogger(__name__)

HELD = "held"


def start_job(tenant_id: str, job_id: str, publisher: Publisher | None = None) -> str | None:
    """Mark the job running and publish its current stage's compute tasks, in the same
    transaction (no ``fan_out`` hop). A job that is already running continues from its
    last finished stage. A job over its tenant's running-job limit, or of a suspended
    tenant, stays queued, held. Returns the stage dispatched, ``"held"``, or None for an
    ended job."""
    with transaction() as session:
        started = lifecycle.start(session, tenant_id, job_id)
        if isinstance(started, lifecycle.Held):
            logger.info("job held", extra={"reason": started.reason.value, "limit": started.limit})
            return HELD
        if started is None:
            return None
        job = started.job
        stage = job.stage or JobStage.DATASETS
        publications = distribution.stage_publications(session, job, stage)
        (publisher or default_publisher()).after_commit(session, publications)
    return stage.value


def cancel_tasks(tenant_id: str, job_id: str) -> list[str]:
    """The job has ended ``cancelled``: mark its open tasks cancelled and return their
    message ids (the task revokes them, terminating any that already run)."""
    with transaction() as session:
        job = repository.load_job(session, tenant_id, job_id)
        if job is None:
            return []
        return repository.cancel_open_tasks(session, job)


def reconcile(publisher: Publisher | None = None, limit: int = 500) -> int:
    """Re-dispatch (or fail) lost jobs, then start the held jobs of tenants with a free
    slot; returns how many jobs were moved."""
    publisher = publisher or default_publisher()
    jobs = get_settings().jobs
    cutoff = utcnow() - timedelta(seconds=jobs.stall_seconds)
    with transaction() as session:
        stalled = repository.unscoped_stalled_jobs(session, before=cutoff, limit=limit)
    slugs = {tenant: slug for tenant, _, slug in stalled}
    waiting, unread = _jobs_waiting_in_queues(slugs)
    handled = 0
    for tenant_id, job_id, _ in stalled:
        if job_id in waiting or slugs.get(tenant_id) in unread:
            continue  # its message is queued: it waits its turn, it is not lost
        handled += _redispatch(tenant_id, job_id, publisher, jobs.max_dispatches)
    return handled + release_stranded(publisher)


def _jobs_waiting_in_queues(slugs: dict[uuid.UUID, str]) -> tuple[set[uuid.UUID], set[str]]:
    """The jobs of these tenants that have a message waiting in a queue, and the tenants
    whose queues are too long to read whole (all their jobs count as waiting). Without the
    fair dispatcher (the embedded broker) no queue is looked into."""
    dispatcher = get_dispatcher()
    if dispatcher is None or not slugs:
        return set(), set()
    jobs, unread = dispatcher.queued_job_ids(slugs.values())
    return {uuid.UUID(job) for job in jobs}, unread


def _redispatch(
    tenant_id: uuid.UUID, job_id: uuid.UUID, publisher: Publisher, max_dispatches: int
) -> int:
    with transaction() as session:
        job = repository.load_job(session, tenant_id, job_id)
        if job is None or job.state not in lifecycle.TRANSITIONS:
            return 0
        logger.warning(
            "re-dispatching a lost job",
            extra={
                "job_id": str(job_id),
                "tenant_id": str(tenant_id),
                "stage": job.stage.value if job.stage else None,
                "dispatches": job.dispatch_count,
            },
        )
        publisher.after_commit(
            session,
            lifecycle.redispatch(
                session, job, max_dispatches=max_dispatches, lease_seconds=plan.lease_seconds()
            ),
        )
    return 1


def release_stranded(publisher: Publisher | None = None) -> int:
    """Safety net for held jobs: start those of every tenant that has a free slot (an end
    whose release was lost: a crash after its commit, a failed publish). Returns how many
    were released."""
    publisher = publisher or default_publisher()
    with transaction() as session:
        tenants = repository.unscoped_tenants_with_held_jobs(session)
    released = 0
    for tenant_id in tenants:
        with transaction() as session:
            publications = lifecycle.release_held(session, tenant_id)
            publisher.after_commit(session, publications)
        released += len(publications)
    return released


def sync_suspended() -> int:
    """Rebuild the dispatcher's set of suspended tenants from the database (a Redis restart
    must not release a suspended tenant's work); returns how many are suspended."""
    dispatcher = get_dispatcher()
    if dispatcher is None:
        return 0
    with transaction() as session:
        slugs = lifecycle.suspended_slugs(session)
    dispatcher.replace_suspended(slugs)
    return len(slugs)
