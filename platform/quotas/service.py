"""Reading and changing tenants' quotas, and what a tenant uses of them. Services flush; the
request commits."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from celeriac.platform.audit import record_admin_action
from celeriac.platform.db import run_after_commit
from celeriac.platform.errors import Conflict
from celeriac.platform.jobs import repository
from celeriac.platform.models import (
    Quota,
    Tenant,
    TenantStatus,
    UsageRecord,
    WebhookTarget,
    utcnow,
)
from celeriac.platform.quotas.cache import invalidate_quotas
from celeriac.platform.quotas.plans import LIMIT_NAMES, effective, overrides_of, plan_limits
from celeriac.platform.quotas.schemas import (
    Meter,
    QuotaLimits,
    QuotaOverrides,
    QuotaStatus,
    QuotaUsage,
    TenantQuotas,
)
from celeriac.platform.quotas.weights import push_weight_after_commit

JOBS_SUBMITTED = "jobs.submitted"


def month_start(now: datetime) -> datetime:
    return now.astimezone(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def next_month_start(now: datetime) -> datetime:
    start = month_start(now)
    return (
        start.replace(year=start.year + 1, month=1)
        if start.month == 12
        else start.replace(month=start.month + 1)
    )


def tenant_quotas(session: Session, tenant: Tenant) -> TenantQuotas:
    quota = session.get(Quota, tenant.id)
    overrides = overrides_of(quota)
    return TenantQuotas(
        tenant_id=tenant.id,
        plan=tenant.plan,
        limits=QuotaLimits(**effective(tenant.plan, overrides).as_dict()),
        overrides=QuotaOverrides(**overrides),
        plan_defaults=QuotaLimits(**plan_limits(tenant.plan).as_dict()),
        updated_at=quota.updated_at if quota is not None else None,
    )


def set_quotas(
    session: Session, tenant: Tenant, overrides: QuotaOverrides, *, actor: str, actor_role: str
) -> TenantQuotas:
    """Replace the tenant's overrides (a null field follows the plan), audited; every API
    process applies them within ``api.quota_cache_poll_seconds`` of the commit, and the
    fair dispatcher its weight from its next release."""
    if tenant.status is TenantStatus.DELETED:
        raise Conflict("a deleted tenant's quotas cannot be changed")
    quota = session.get(Quota, tenant.id, with_for_update=True)
    before = overrides_of(quota)
    after = {name: getattr(overrides, name) for name in LIMIT_NAMES}
    if quota is None:
        quota = Quota(tenant_id=tenant.id)
        session.add(quota)
    for name, value in after.items():
        setattr(quota, name, value)
    quota.updated_at = utcnow()
    session.flush()
    record_admin_action(
        session,
        actor=actor,
        actor_role=actor_role,
        action="tenant.quotas.update",
        target_type="tenant",
        target_id=str(tenant.id),
        tenant_id=tenant.id,
        details={"before": before, "after": after},
    )
    run_after_commit(session, invalidate_quotas)
    if before["dispatch_weight"] != after["dispatch_weight"]:
        push_weight_after_commit(session, tenant)
    return tenant_quotas(session, tenant)


def jobs_submitted_since(session: Session, tenant_id: uuid.UUID, since: datetime) -> int:
    """Jobs submitted since ``since``, from the usage records (adjustments included)."""
    total = session.scalar(
        select(func.coalesce(func.sum(UsageRecord.quantity), 0)).where(
            UsageRecord.tenant_id == tenant_id,
            UsageRecord.metric == JOBS_SUBMITTED,
            UsageRecord.occurred_at >= since,
        )
    )
    return int(total or 0)


def running_jobs(session: Session, tenant_id: uuid.UUID) -> int:
    return repository.running_count(session, tenant_id)


def quota_status(session: Session, tenant: Tenant) -> QuotaStatus:
    """The tenant's limits and current use (read from the database, the source of truth)."""
    view = tenant_quotas(session, tenant)
    limits = view.limits
    now = utcnow()
    targets = int(
        session.scalar(
            select(func.count())
            .select_from(WebhookTarget)
            .where(WebhookTarget.tenant_id == tenant.id)
        )
        or 0
    )

    def meter(limit: int, used: int, resets_at: datetime | None = None) -> Meter:
        return Meter(limit=limit, used=used, remaining=max(0, limit - used), resets_at=resets_at)

    return QuotaStatus(
        plan=tenant.plan,
        limits=limits,
        usage=QuotaUsage(
            running_jobs=meter(limits.max_running_jobs, running_jobs(session, tenant.id)),
            jobs_this_month=meter(
                limits.jobs_per_month,
                jobs_submitted_since(session, tenant.id, month_start(now)),
                next_month_start(now),
            ),
            webhook_targets=meter(limits.max_webhook_targets, targets),
        ),
    )
