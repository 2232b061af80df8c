"""Admin routes for tenants (JWT role ``admin``)."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Query, Response, status

from celeriac.platform.api.deps import AdminDep, SessionDep, invalidate_auth
from celeriac.platform.api.problems import problem_openapi
from celeriac.platform.api.schemas import Page
from celeriac.platform.models import TenantStatus
from celeriac.platform.tenants import service
from celeriac.platform.tenants.schemas import (
    TenantCreate,
    TenantKeyRotation,
    TenantOut,
    TenantUpdate,
)

router = APIRouter(prefix="/v1/admin/tenants", tags=["tenants (admin)"])


@router.post("", status_code=status.HTTP_201_CREATED, response_model=TenantOut)
def create_tenant(
    body: TenantCreate, admin: AdminDep, session: SessionDep, response: Response
) -> TenantOut:
    """Create a tenant. The slug names its queues and cannot change."""
    tenant = service.create_tenant(
        session, slug=body.slug, name=body.name, plan=body.plan, actor=admin.subject
    )
    response.headers["Location"] = f"/v1/admin/tenants/{tenant.id}"
    return TenantOut.model_validate(tenant)


@router.get("", response_model=Page[TenantOut])
def list_tenants(
    _admin: AdminDep,
    session: SessionDep,
    status: TenantStatus | None = None,
    cursor: str | None = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 50,
) -> Page[TenantOut]:
    """Tenants, newest first, with cursor pagination."""
    rows, next_cursor = service.list_tenants(session, status=status, cursor=cursor, limit=limit)
    return Page(data=[TenantOut.model_validate(t) for t in rows], next_cursor=next_cursor)


@router.get("/{tenant_id}", response_model=TenantOut)
def get_tenant(tenant_id: uuid.UUID, _admin: AdminDep, session: SessionDep) -> TenantOut:
    return TenantOut.model_validate(service.get_tenant(session, tenant_id))


@router.patch("/{tenant_id}", response_model=TenantOut)
def update_tenant(
    tenant_id: uuid.UUID, body: TenantUpdate, admin: AdminDep, session: SessionDep
) -> TenantOut:
    """Change the name, plan or status (active / suspended). Suspension takes effect on
    every API process within seconds."""
    tenant = service.get_tenant(session, tenant_id)
    tenant = service.update_tenant(
        session,
        tenant,
        changes=body.model_dump(exclude_unset=True, exclude_none=True),
        actor=admin.subject,
        invalidate_auth=invalidate_auth,
    )
    return TenantOut.model_validate(tenant)


@router.delete("/{tenant_id}", response_model=TenantOut)
def delete_tenant(tenant_id: uuid.UUID, admin: AdminDep, session: SessionDep) -> TenantOut:
    """Delete: revokes every API key, disables its webhook targets and stops new jobs at
    once (queued and running jobs end `cancelled`); then destroys the tenant's
    encryption key (its data is unreadable from then on; KMS deletes the key after
    `keys.deletion_window_days`) and deletes its stored objects. Usage records and the
    audit log stay. Idempotent."""
    tenant = service.get_tenant(session, tenant_id)
    tenant = service.delete_tenant(
        session, tenant, actor=admin.subject, invalidate_auth=invalidate_auth
    )
    return TenantOut.model_validate(tenant)


@router.post(
    "/{tenant_id}/rotate-key",
    response_model=TenantKeyRotation,
    responses=problem_openapi(409),
)
def rotate_tenant_key(
    tenant_id: uuid.UUID, admin: AdminDep, session: SessionDep
) -> TenantKeyRotation:
    """Rotate the tenant's encryption key: new data is encrypted under new key material
    (every API and worker process within `keys.data_key_cache_ttl_seconds`), data written
    before stays readable. Audited. 409 for a deleted tenant, in `keys.mode=pooled` (the
    shared key rotates in KMS for every tenant) or when KMS refuses (its on-demand limit)."""
    tenant = service.get_tenant(session, tenant_id)
    tenant = service.rotate_tenant_key(session, tenant, actor=admin.subject)
    assert tenant.key_id is not None
    return TenantKeyRotation(
        tenant_id=tenant.id, key_id=tenant.key_id, rotated_at=tenant.updated_at
    )
