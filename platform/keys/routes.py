"""API key routes: admins manage any tenant's keys, a tenant key with ``keys:manage``
manages its own tenant's."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Response, status
from sqlalchemy.orm import Session

from celeriac.platform.api.deps import (
    AdminDep,
    Admit,
    SessionDep,
    SettingsDep,
    invalidate_auth,
)
from celeriac.platform.api.schemas import Page
from celeriac.platform.audit import record_admin_action
from celeriac.platform.auth.context import TenantContext
from celeriac.platform.auth.jwt import AdminPrincipal
from celeriac.platform.keys import service
from celeriac.platform.keys.schemas import ApiKeyCreate, ApiKeyCreated, ApiKeyOut, ApiKeyRoll
from celeriac.platform.models import ApiKey
from celeriac.platform.repository import HasTenant
from celeriac.platform.settings import Settings
from celeriac.platform.tenants.service import get_tenant

KeysManager = Annotated[TenantContext, Depends(Admit(service.Scope.KEYS_MANAGE).tenant)]
# Revoking only takes access away: a suspended tenant may still revoke a leaked key.
KeysRevoker = Annotated[
    TenantContext, Depends(Admit(service.Scope.KEYS_MANAGE, while_suspended=True).tenant)
]

tenant_router = APIRouter(prefix="/v1/keys", tags=["API keys"])
admin_router = APIRouter(prefix="/v1/admin/tenants/{tenant_id}/keys", tags=["API keys (admin)"])


class _AdminScope:
    def __init__(self, tenant_id: uuid.UUID) -> None:
        self.tenant_id = tenant_id


def _admin_scope(session: Session, tenant_id: uuid.UUID) -> HasTenant:
    return _AdminScope(get_tenant(session, tenant_id, include_deleted=False).id)


def _audit(session: Session, admin: AdminPrincipal, action: str, key: ApiKey) -> None:
    record_admin_action(
        session,
        actor=admin.subject,
        actor_role=admin.role.value,
        action=action,
        target_type="api_key",
        target_id=str(key.id),
        tenant_id=key.tenant_id,
    )


def _created(issued: service.IssuedKey, response: Response, location: str) -> ApiKeyCreated:
    response.headers["Location"] = f"{location}/{issued.api_key.id}"
    response.headers["Cache-Control"] = "no-store"
    return ApiKeyCreated(
        **ApiKeyOut.model_validate(issued.api_key).model_dump(), key=issued.plaintext
    )


def _create(
    session: Session,
    settings: Settings,
    scope: HasTenant,
    body: ApiKeyCreate,
    by: str,
    granted_by: frozenset[str] | None,
) -> service.IssuedKey:
    return service.create_api_key(
        session,
        tenant_id=scope.tenant_id,
        pepper=settings.api_key_pepper(),
        scopes=body.scopes,
        name=body.name,
        expires_at=body.expires_at,
        environment=body.environment,
        created_by=by,
        granted_by=granted_by,
    )


def _roll(
    session: Session,
    settings: Settings,
    scope: HasTenant,
    key_id: uuid.UUID,
    body: ApiKeyRoll,
    by: str,
) -> service.IssuedKey:
    return service.roll_api_key(
        session,
        scope,
        key_id,
        pepper=settings.api_key_pepper(),
        old_key_grace=timedelta(seconds=body.old_key_expires_in_seconds),
        created_by=by,
        invalidate=invalidate_auth,
    )


def _page(session: Session, scope: HasTenant, cursor: str | None, limit: int) -> Page[ApiKeyOut]:
    rows, next_cursor = service.ApiKeyRepository(session, scope).page(cursor=cursor, limit=limit)
    return Page(data=[ApiKeyOut.model_validate(k) for k in rows], next_cursor=next_cursor)


Limit = Annotated[int, Query(ge=1, le=100)]

# --- tenant ----------------------------------------------------------------------------


@tenant_router.post("", status_code=status.HTTP_201_CREATED, response_model=ApiKeyCreated)
def create_key(
    body: ApiKeyCreate,
    ctx: KeysManager,
    session: SessionDep,
    settings: SettingsDep,
    response: Response,
) -> ApiKeyCreated:
    """Create a key for the calling tenant, with at most the calling key's scopes."""
    issued = _create(session, settings, ctx, body, ctx.principal, ctx.scopes)
    return _created(issued, response, "/v1/keys")


@tenant_router.get("", response_model=Page[ApiKeyOut])
def list_keys(
    ctx: KeysManager, session: SessionDep, cursor: str | None = None, limit: Limit = 50
) -> Page[ApiKeyOut]:
    """The tenant's keys (prefix and last four characters only), newest first."""
    return _page(session, ctx, cursor, limit)


@tenant_router.get("/{key_id}", response_model=ApiKeyOut)
def get_key(key_id: uuid.UUID, ctx: KeysManager, session: SessionDep) -> ApiKeyOut:
    return ApiKeyOut.model_validate(service.ApiKeyRepository(session, ctx).get(key_id))


@tenant_router.post("/{key_id}/revoke", response_model=ApiKeyOut)
def revoke_key(key_id: uuid.UUID, ctx: KeysRevoker, session: SessionDep) -> ApiKeyOut:
    """Revoke a key at once (idempotent); a suspended tenant may too."""
    revoked = service.revoke_api_key(session, ctx, key_id, invalidate=invalidate_auth)
    return ApiKeyOut.model_validate(revoked)


@tenant_router.post("/{key_id}/roll", status_code=201, response_model=ApiKeyCreated)
def roll_key(
    key_id: uuid.UUID,
    ctx: KeysManager,
    session: SessionDep,
    settings: SettingsDep,
    response: Response,
    body: ApiKeyRoll | None = None,
) -> ApiKeyCreated:
    """Issue a replacement; the old key keeps working for the chosen grace period."""
    issued = _roll(session, settings, ctx, key_id, body or ApiKeyRoll(), ctx.principal)
    return _created(issued, response, "/v1/keys")


# --- admin -----------------------------------------------------------------------------


@admin_router.post("", status_code=status.HTTP_201_CREATED, response_model=ApiKeyCreated)
def admin_create_key(
    tenant_id: uuid.UUID,
    body: ApiKeyCreate,
    admin: AdminDep,
    session: SessionDep,
    settings: SettingsDep,
    response: Response,
) -> ApiKeyCreated:
    """Create a key for any tenant."""
    scope = _admin_scope(session, tenant_id)
    issued = _create(session, settings, scope, body, f"admin:{admin.subject}", None)
    _audit(session, admin, "api_key.create", issued.api_key)
    return _created(issued, response, f"/v1/admin/tenants/{tenant_id}/keys")


@admin_router.get("", response_model=Page[ApiKeyOut])
def admin_list_keys(
    tenant_id: uuid.UUID,
    _admin: AdminDep,
    session: SessionDep,
    cursor: str | None = None,
    limit: Limit = 50,
) -> Page[ApiKeyOut]:
    return _page(session, _admin_scope(session, tenant_id), cursor, limit)


@admin_router.get("/{key_id}", response_model=ApiKeyOut)
def admin_get_key(
    tenant_id: uuid.UUID, key_id: uuid.UUID, _admin: AdminDep, session: SessionDep
) -> ApiKeyOut:
    scope = _admin_scope(session, tenant_id)
    return ApiKeyOut.model_validate(service.ApiKeyRepository(session, scope).get(key_id))


@admin_router.post("/{key_id}/revoke", response_model=ApiKeyOut)
def admin_revoke_key(
    tenant_id: uuid.UUID, key_id: uuid.UUID, admin: AdminDep, session: SessionDep
) -> ApiKeyOut:
    scope = _admin_scope(session, tenant_id)
    revoked = service.revoke_api_key(session, scope, key_id, invalidate=invalidate_auth)
    _audit(session, admin, "api_key.revoke", revoked)
    return ApiKeyOut.model_validate(revoked)


@admin_router.post("/{key_id}/roll", status_code=201, response_model=ApiKeyCreated)
def admin_roll_key(
    tenant_id: uuid.UUID,
    key_id: uuid.UUID,
    admin: AdminDep,
    session: SessionDep,
    settings: SettingsDep,
    response: Response,
    body: ApiKeyRoll | None = None,
) -> ApiKeyCreated:
    scope = _admin_scope(session, tenant_id)
    issued = _roll(session, settings, scope, key_id, body or ApiKeyRoll(), f"admin:{admin.subject}")
    _audit(session, admin, "api_key.roll", issued.api_key)
    return _created(issued, response, f"/v1/admin/tenants/{tenant_id}/keys")
