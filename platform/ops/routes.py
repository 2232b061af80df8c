"""Operator views of the queues: the admin backlog (per pool, band and tenant) and the
per-pool demand that KEDA scales the worker pools on."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable

import redis
from fastapi import APIRouter, Request
from pydantic import BaseModel

from celeriac.platform.api.deps import AdminDep
from celeriac.platform.dispatch import FairDispatcher, get_dispatcher
from celeriac.platform.errors import ServiceUnavailable
from celeriac.platform.queues import Pool

router = APIRouter(prefix="/v1/admin/backlog", tags=["operations (admin)"])
# Served only on the API's internal ops port, behind a bearer token
# (celeriac.platform.ops.server): read by KEDA's metrics-api scaler, it carries one number
# per pool, never a tenant's name, and does not depend on PostgreSQL.
metrics_router = APIRouter(prefix="/metrics", include_in_schema=False)
# How long a client waits before asking again when the broker cannot be read.
BACKLOG_RETRY_AFTER_SECONDS = 5


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
def backlog(_admin: AdminDep) -> Backlog:
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


class DemandCache:
    """The last per-pool demand, recomputed at most once per ``max_age`` seconds.

    Reading the demand scans the broker's keys (its cost grows with the number of tenant
    queues), and KEDA asks once per ScaledObject per polling interval plus whenever the HPA
    syncs. A lock held across the scan (not just around the cache, as cachetools' ``cached``
    does) makes concurrent askers share one scan instead of starting one each."""

    def __init__(self, max_age: float) -> None:
        self.max_age = max_age
        self.scans = 0
        self._lock = threading.Lock()
        self._value: dict[str, PoolDemand] | None = None
        self._taken = 0.0

    def get(self, compute: Callable[[], dict[str, PoolDemand]]) -> dict[str, PoolDemand]:
        """The cached demand, or ``compute()``'s when it is older than ``max_age``."""
        with self._lock:
            if self._value is None or time.monotonic() - self._taken >= self.max_age:
                started = time.monotonic()
                self._value = compute()
                self._taken = started
                self.scans += 1
            return self._value


def _unavailable(detail: str) -> ServiceUnavailable:
    return ServiceUnavailable(detail, headers={"Retry-After": str(BACKLOG_RETRY_AFTER_SECONDS)})


@metrics_router.get("/backlog")
def backlog_metrics(request: Request) -> dict[str, PoolDemand]:
    """Per-pool demand for KEDA's metrics-api scaler (``valueLocation: compute.demand``),
    from the app's :class:`DemandCache`. Without a Redis broker there is no backlog to read,
    and with the broker unreachable there is no number to trust: 503 rather than a false
    zero (KEDA then keeps the current replicas: ``fallback.behavior``)."""
    dispatcher = get_dispatcher()
    if dispatcher is None:
        raise _unavailable("queue backlogs are readable only on a Redis broker")
    cache: DemandCache = request.app.state.demand_cache
    try:
        return cache.get(lambda: pool_demand(dispatcher))
    except redis.RedisError:
        raise _unavailable("the broker cannot be read") from None
