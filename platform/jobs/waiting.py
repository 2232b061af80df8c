"""Why a queued job is not running (``waiting_reason`` on ``GET /v1/jobs/{id}``).

Read, never estimated: the tenant's status and its running-job limit from the database,
the rest from the fair dispatcher's state on the broker Redis (docs/adr/0001): the
tenant's own queue for the job's band (the job's start message and what lies ahead of it
there) and the band's ring of tenants with a backlog. The dispatcher's keys are read here,
with read-only commands, so that its release script can change without this module in
the way (its key names are imported from it).
"""

from __future__ import annotations

import logging
from typing import Any

import redis
from sqlalchemy import select
from sqlalchemy.orm import Session

from celeriac.platform.auth.context import TenantContext
from celeriac.platform.dispatch import MEMBERS, get_dispatcher
from celeriac.platform.jobs import repository
from celeriac.platform.jobs.schemas import WaitingReason
from celeriac.platform.models import Job, JobState, Tenant, TenantStatus
from celeriac.platform.queues import Pool, queue_for
from celeriac.platform.quotas.plans import tenant_limits

logger = logging.getLogger(__name__)

# A queue longer than this is not scanned for the job's position (its length is reported).
SCAN_LIMIT = 10_000


def waiting_reason(session: Session, ctx: TenantContext, job: Job) -> WaitingReason | None:
    """The reason, or None when the job is not queued."""
    if job.state is not JobState.QUEUED:
        return None
    status = session.scalar(select(Tenant.status).where(Tenant.id == ctx.tenant_id))
    if status is TenantStatus.SUSPENDED:
        return WaitingReason(
            reason="tenant-suspended",
            detail="the tenant is suspended: its jobs wait until an admin reactivates it",
        )
    if job.held_since is not None:
        limit = tenant_limits(session, ctx.tenant_id).max_running_jobs
        running = repository.running_count(session, ctx.tenant_id)
        return WaitingReason(
            reason="running-job-limit",
            limit=limit,
            running=running,
            detail=f"{running} of the tenant's jobs are running, its limit is {limit} "
            "(max_running_jobs); this one starts when one of them ends",
        )
    try:
        return _from_dispatcher(job, ctx.tenant_slug)
    except redis.RedisError:
        logger.warning("reading the dispatcher's state failed", exc_info=True)
        return None


def _from_dispatcher(job: Job, tenant_slug: str) -> WaitingReason | None:
    dispatcher = get_dispatcher()
    if dispatcher is None:
        return None  # the embedded broker has no backlogs to read
    client = dispatcher.client
    band = job.priority.value
    queue = queue_for(Pool.ORCHESTRATION, band, tenant_slug).name
    length = int(client.llen(queue))
    ahead = _ahead_of(client, queue, length, str(job.id))
    if ahead is not None and ahead > 0:
        return WaitingReason(
            reason="queued-behind-own-tasks",
            ahead=ahead,
            band=band,
            detail=f"{ahead} of the tenant's own tasks in band {band} are ahead of this "
            "job's start",
        )
    members = client.smembers(MEMBERS.format(pool=Pool.ORCHESTRATION.value, band=band))
    others = {m.decode() if isinstance(m, bytes) else str(m) for m in members} - {tenant_slug}
    return WaitingReason(
        reason="fair-share",
        band=band,
        active_tenants=len(others),
        ahead=ahead or 0,
        detail=f"waiting for a free worker slot, shared fairly with {len(others)} other "
        f"active tenant(s) in band {band}",
    )


def _ahead_of(client: Any, queue: str, length: int, job_id: str) -> int | None:
    """Messages that leave the tenant's queue before the job's start message (kombu
    LPUSHes and workers' releases take from the tail), None when it is not there."""
    if length == 0:
        return None
    if length > SCAN_LIMIT:
        return length
    entries: list[bytes] = client.lrange(queue, 0, -1)
    needle = job_id.encode()
    for index in range(len(entries) - 1, -1, -1):
        if needle in entries[index]:
            return len(entries) - 1 - index
    return None
