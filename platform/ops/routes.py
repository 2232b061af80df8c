"""Operator views of the queues: the admin backlog (per pool, band and tenant) and the
per-pool demand that KEDA scales the worker pools on."""

from __future__ import annotations

from collections import Counter

from fastapi import APIRouter
from pydantic import BaseModel

from celeriac.platform.api.deps import AdminDep
from celeriac.platform.dispatch import FairDispatcher, get_dispatcher
from celeriac.platform.errors import ServiceUnavailable
from celeriac.platform.queues import Pool

router = APIRouter(prefix="/v1/admin/backlog", tags=["operations (admin)"])
# Unauthenticated and left out of the OpenAPI document: it is read by KEDA's metrics-api
# scaler inside the cluster and carries only one number per pool, never a tenant's name.
metrics_router = APIRouter(prefix="/metrics", include_in_schema=False)


class QueueBacklog(BaseModel):
    queue: str
    pool: str
    band: str
    tenant: str
    messages: int


class Backlog(BaseModel):
    fair_dispatch: bool
    ready: dict[str, int]
    tenants: list[QueueBacklog]


class PoolDemand(BaseModel):
    queued: int  # waiting in the pool's tenant queues and its ready queue
    running: int  # held by the pool's live workers
    demand: int  # queued + running: the pool's replicas are sized to this


@router.get("", response_model=Backlog)
def backlog(admin: AdminDep) -> Backlog:
    """Messages waiting in every tenant queue and in each pool's ready queue (what KEDA
    scales on). Empty without a Redis broker: other brokers have no tenant queues."""
    dispatcher = get_dispatcher()
    if dispatcher is None:
        return Backlog(fair_dispatch=False, ready={}, tenants=[])
    waiting = sorted(dispatcher.tenant_backlogs().items())
    return Backlog(
        fair_dispatch=True,
        ready={pool.value: dispatcher.ready_depth(pool) for pool in Pool},
        tenants=[
            QueueBacklog(
                queue=q.name,
                pool=q.pool.value,
                band=q.band.value,
                tenant=q.tenant,
                messages=count,
            )
            for q, count in waiting
        ],
    )


def pool_demand(dispatcher: FairDispatcher) -> dict[str, PoolDemand]:
    """Each pool's queued and running tasks, from the same backlog reads as the admin view."""
    waiting: Counter[Pool] = Counter()
    for queue, count in dispatcher.tenant_backlogs().items():
        waiting[queue.pool] += count
    demand = {}
    for pool in Pool:
        queued = waiting[pool] + dispatcher.ready_depth(pool)
        running = dispatcher.held(pool)
        demand[pool.value] = PoolDemand(queued=queued, running=running, demand=queued + running)
    return demand


@metrics_router.get("/backlog")
def backlog_metrics() -> dict[str, PoolDemand]:
    """Per-pool demand for KEDA's metrics-api scaler (``valueLocation: compute.demand``).
    Without a Redis broker there is no backlog to read: 503 rather than a false zero."""
    dispatcher = get_dispatcher()
    if dispatcher is None:
        raise ServiceUnavailable("queue backlogs are readable only on a Redis broker")
    return pool_demand(dispatcher)
