"""What workers read of a tenant on every task, through the shared cache."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from celeriac.platform.cache import get_cache, tenant_entry
from celeriac.platform.errors import NotFound
from celeriac.platform.models import Tenant, TenantStatus

__all__ = ["TenantProfile", "profile_entry", "tenant_profile"]


@dataclass(frozen=True)
class TenantProfile:
    """What workers need to know of a tenant on every task, cached for all of them."""

    id: uuid.UUID
    slug: str
    status: TenantStatus
    plan: str


def profile_entry(tenant_id: uuid.UUID) -> str:
    return tenant_entry(str(tenant_id), "profile")


def tenant_profile(session: Session, tenant_id: uuid.UUID) -> TenantProfile:
    """The tenant's slug, status and plan, read through the shared cache (``session`` is
    used on a miss). Changing or deleting the tenant deletes the cached copy."""

    def load() -> dict[str, str]:
        row = session.execute(
            select(Tenant.slug, Tenant.status, Tenant.plan).where(Tenant.id == tenant_id)
        ).one_or_none()
        if row is None:
            raise NotFound(f"no tenant with id {tenant_id}")
        return {"slug": row.slug, "status": TenantStatus(row.status).value, "plan": row.plan}

    cache = get_cache()
    cached = cache.get_or_load_json(
        profile_entry(tenant_id), load, ttl_seconds=cache.settings.config_ttl_seconds
    )
    return TenantProfile(
        id=tenant_id,
        slug=cached["slug"],
        status=TenantStatus(cached["status"]),
        plan=cached["plan"],
    )
