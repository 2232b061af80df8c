"""Quota routes: admins read and override a tenant's limits; a tenant reads its own."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Depends

from celeriac.platform.api.deps import AdminDep, Admit, SessionDep
from celeriac.platform.auth.context import TenantContext
from celeriac.platform.quotas import service
from celeriac.platform.quotas.schemas import QuotaOverrides, QuotaStatus, TenantQuotas
from celeriac.platform.tenants.service import get_tenant

admin_router = APIRouter(prefix="/v1/admin/tenants/{tenant_id}/quotas", tags=["quotas (admin)"])
tenant_router = APIRouter(prefix="/v1/quotas", tags=["quotas"])

AnyTenantKey = Annotated[TenantContext, Depends(Admit().tenant)]


@admin_router.get("", response_model=TenantQuotas)
def get_quotas(tenant_id: uuid.UUID, _admin: AdminDep, session: SessionDep) -> TenantQuotas:
    """The tenant's limits in force, its overrides and its plan's defaults."""
    return service.tenant_quotas(session, get_tenant(session, tenant_id, include_deleted=False))


@admin_router.put("", response_model=TenantQuotas)
def put_quotas(
    tenant_id: uuid.UUID, body: QuotaOverrides, admin: AdminDep, session: SessionDep
) -> TenantQuotas:
    """Replace the tenant's overrides: a field left out or null follows the plan. Audited;
    every API process applies the change within 5 seconds."""
    tenant = get_tenant(session, tenant_id, include_deleted=False)
    return service.set_quotas(
        session, tenant, body, actor=admin.subject, actor_role=admin.role.value
    )


@tenant_router.get("", response_model=QuotaStatus)
def get_own_quotas(ctx: AnyTenantKey, session: SessionDep) -> QuotaStatus:
    """The calling tenant's limits and what it currently uses of them."""
    return service.quota_status(session, get_tenant(session, ctx.tenant_id))
