"""What each plan allows, and a tenant's effective limits (its overrides over its plan).

The plans are code, not rows: changing what a plan includes is a release (and a line in the
changelog), while a tenant's exception is an admin's override in ``quotas``.
"""

from __future__ import annotations

import uuid
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from celeriac.platform.models import Quota, Tenant

MIB = 1024 * 1024


@dataclass(frozen=True)
class Limits:
    """One tenant's limits. The names are the columns of ``quotas`` (its overrides)."""

    # Token bucket: ``requests_per_second`` sustained, up to ``request_burst`` at once.
    requests_per_second: int
    request_burst: int
    max_running_jobs: int
    jobs_per_month: int
    # The largest request body of a job submission (the platform's own body limit,
    # api.max_body_bytes, still applies on top).
    max_payload_bytes: int
    max_records_per_job: int
    max_webhook_targets: int
    # The tenant's share of worker slots when tenants compete for them: the fair
    # dispatcher's round-robin gives it this many tasks per turn (docs/adr/0001).
    dispatch_weight: int
    # Days a finished job's data is kept before beat deletes it (the row stays).
    retention_days: int

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


LIMIT_NAMES = tuple(f.name for f in fields(Limits))

PLANS: dict[str, Limits] = {
    "free": Limits(
        requests_per_second=10,
        request_burst=50,
        max_running_jobs=2,
        jobs_per_month=1_000,
        max_payload_bytes=10 * MIB,
        max_records_per_job=100_000,
        max_webhook_targets=20,
        dispatch_weight=1,
        retention_days=7,
    ),
    "pro": Limits(
        requests_per_second=50,
        request_burst=200,
        max_running_jobs=10,
        jobs_per_month=100_000,
        max_payload_bytes=10 * MIB,
        max_records_per_job=1_000_000,
        max_webhook_targets=50,
        dispatch_weight=2,
        retention_days=30,
    ),
    "enterprise": Limits(
        requests_per_second=200,
        request_burst=1_000,
        max_running_jobs=50,
        jobs_per_month=10_000_000,
        max_payload_bytes=10 * MIB,
        max_records_per_job=10_000_000,
        max_webhook_targets=100,
        dispatch_weight=4,
        retention_days=365,
    ),
}
DEFAULT_PLAN = "free"


def plan_limits(plan: str) -> Limits:
    """A plan's limits; an unknown plan name (a row written by hand) gets the free plan's."""
    return PLANS.get(plan, PLANS[DEFAULT_PLAN])


def overrides_of(quota: Quota | None) -> dict[str, int | None]:
    return {name: getattr(quota, name) if quota is not None else None for name in LIMIT_NAMES}


def effective(plan: str, overrides: dict[str, Any]) -> Limits:
    """The plan's limits with every non-null override applied."""
    chosen = {k: v for k, v in overrides.items() if k in LIMIT_NAMES and v is not None}
    return replace(plan_limits(plan), **chosen)


def tenant_limits(session: Session, tenant_id: uuid.UUID) -> Limits:
    """The tenant's effective limits, read from the database (one query)."""
    row = session.execute(
        select(Tenant.plan, Quota)
        .select_from(Tenant)
        .outerjoin(Quota, Quota.tenant_id == Tenant.id)
        .where(Tenant.id == tenant_id)
    ).one_or_none()
    if row is None:
        return plan_limits(DEFAULT_PLAN)
    return effective(row[0], overrides_of(row[1]))
