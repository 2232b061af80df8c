"""Admin view of the queues: what waits, per pool, band and tenant."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel

from celeriac.platform.api.deps import AdminDep
from celeriac.platform.dispatch import get_dispatcher
from celeriac.platform.settings import Pool

router = APIRouter(prefix="/v1/admin/backlog", tags=["operations (admin)"])


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
