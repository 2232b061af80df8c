"""Periodic work started by beat, run on the orchestration pool."""

from __future__ import annotations

import logging

from celery import shared_task

from celeriac.platform.dispatch import get_dispatcher
from celeriac.platform.jobs.data import SWEEP_BATCH, expire_jobs
from celeriac.platform.models import utcnow
from celeriac.platform.queues import Pool, TaskName
from celeriac.platform.quotas.monthly import reconcile_counters
from celeriac.platform.quotas.weights import sync_weights
from celeriac.platform.redis_client import get_redis
from celeriac.platform.tenants import destruction
from celeriac.workers.flow import orchestration as steps

logger = logging.getLogger(__name__)


@shared_task(name=TaskName.RECONCILE, ignore_result=True)
def reconcile() -> int:
    """Rebuild the dispatcher's set of suspended tenants and its weights, re-add tenant
    backlogs that lost their place in the fair dispatcher's ring, and re-dispatch jobs
    that are lost."""
    suspended = steps.sync_suspended()
    dispatcher = get_dispatcher()
    moved = dispatcher.reconcile() if dispatcher is not None else 0
    if sync_weights():
        logger.info("dispatch weights repaired")
    redispatched = steps.reconcile()
    if moved or redispatched:
        logger.info(
            "reconciled",
            extra={"released": moved, "redispatched": redispatched, "suspended": suspended},
        )
    return redispatched


@shared_task(name=TaskName.RELEASE, ignore_result=True)
def release() -> int:
    """Top up every pool's ready queue from tenant backlogs (a safety net: releases also
    happen on publish and whenever a worker takes a task)."""
    dispatcher = get_dispatcher()
    if dispatcher is None:
        return 0
    return sum(dispatcher.release(pool) for pool in Pool)


@shared_task(name=TaskName.DESTROY_DELETED_TENANTS, ignore_result=True)
def destroy_deleted_tenants() -> int:
    """Finish crypto-shredding deleted tenants: destroy keys the API could not, then
    delete their blobs (network calls to KMS/S3 or short file deletes: nothing that
    computes)."""
    return destruction.destroy_deleted_tenants()


@shared_task(name=TaskName.RECONCILE_QUOTA_COUNTERS, ignore_result=True)
def reconcile_quota_counters() -> int:
    """Correct monthly job counters that drifted from the usage records (see
    ``celeriac.platform.quotas.monthly.reconcile_counters``)."""
    client = get_redis()
    return reconcile_counters(client, utcnow()) if client is not None else 0


EXPIRY_BATCHES_PER_RUN = 10


@shared_task(name=TaskName.EXPIRE_JOB_DATA, ignore_result=True)
def expire_job_data() -> int:
    """Delete the data of finished jobs past their tenant's retention, a bounded batch at
    a time and at most ``EXPIRY_BATCHES_PER_RUN`` batches per run (the next run goes on):
    blob deletions and short transactions, nothing that computes."""
    total = 0
    for _ in range(EXPIRY_BATCHES_PER_RUN):
        expired = expire_jobs(SWEEP_BATCH)
        total += expired
        if expired < SWEEP_BATCH:
            break
    return total
