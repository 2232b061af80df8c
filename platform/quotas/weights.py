"""Tenants' weights in the fair dispatcher: their shares of worker slots when they compete.

A tenant's weight is its plan's (free 1, pro 2, enterprise 4) unless an admin overrides it
through the quotas API (``dispatch_weight``). The database is the source of truth; the one
reader is the dispatcher's release script, which reads the Redis hash ``celeriac:weights``
(slug -> weight, absent meaning 1) at every turn. So a change written to the hash after its
commit is in force at the next release, for every process at once; and the reconciler
rewrites the hash from the database every run (``sync_weights``), which repairs a Redis
restart or a write lost after a commit within one reconcile interval.
"""

from __future__ import annotations

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from celeriac.platform.db import run_after_commit, transaction
from celeriac.platform.dispatch import DEFAULT_WEIGHT, get_dispatcher
from celeriac.platform.models import Quota, Tenant, TenantStatus
from celeriac.platform.quotas.plans import DEFAULT_PLAN, PLANS, plan_limits


def weights_by_slug(session: Session) -> dict[str, int]:
    """Every live tenant's weight that is not the default (one query; free tenants without
    an override, most of them, are not read)."""
    weighty_plans = [
        name for name, limits in PLANS.items() if limits.dispatch_weight != DEFAULT_WEIGHT
    ]
    rows = session.execute(
        select(Tenant.slug, Tenant.plan, Quota.dispatch_weight)
        .select_from(Tenant)
        .outerjoin(Quota, Quota.tenant_id == Tenant.id)
        .where(
            Tenant.status != TenantStatus.DELETED,
            or_(Tenant.plan.in_(weighty_plans), Quota.dispatch_weight.is_not(None)),
        )
    ).all()
    weights = {}
    for slug, plan, override in rows:
        weight = override if override is not None else plan_limits(plan).dispatch_weight
        if weight != DEFAULT_WEIGHT:
            weights[slug] = weight
    return weights


def tenant_weight(session: Session, tenant: Tenant) -> int:
    quota = session.get(Quota, tenant.id)
    if quota is not None and quota.dispatch_weight is not None:
        return quota.dispatch_weight
    return plan_limits(tenant.plan or DEFAULT_PLAN).dispatch_weight


def push_weight_after_commit(session: Session, tenant: Tenant) -> None:
    """Once ``session`` commits, give the dispatcher the tenant's weight as it now stands
    (after a change of its plan or of its override). No-op without a Redis dispatcher."""
    if get_dispatcher() is None:
        return
    slug, weight = tenant.slug, tenant_weight(session, tenant)

    def push() -> None:
        dispatcher = get_dispatcher()
        if dispatcher is not None:
            dispatcher.set_weight(slug, weight)

    run_after_commit(session, push)


def sync_weights() -> int:
    """Rewrite the dispatcher's weights from the database (the reconciler's repair);
    returns how many entries changed."""
    dispatcher = get_dispatcher()
    if dispatcher is None:
        return 0
    with transaction() as session:
        wanted = weights_by_slug(session)
    return dispatcher.sync_weights(wanted)
