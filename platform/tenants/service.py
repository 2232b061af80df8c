"""Tenant lifecycle. Services flush; the request or command that called them commits."""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Sequence

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from celeriac.platform.audit import record_admin_action
from celeriac.platform.db import run_after_commit
from celeriac.platform.errors import Conflict, NotFound, ValidationFailed
from celeriac.platform.models import SLUG_PATTERN, ApiKey, Tenant, TenantStatus, utcnow
from celeriac.platform.quotas.cache import invalidate_quotas
from celeriac.platform.repository import keyset_page
from celeriac.platform.tenant_data import key_provider

_SLUG = re.compile(SLUG_PATTERN)


class InvalidSlug(ValidationFailed):
    pass


class SlugTaken(Conflict):
    pass


def validate_slug(slug: str) -> str:
    if not _SLUG.fullmatch(slug):
        raise InvalidSlug(
            f"slug {slug!r} must be 3 to 40 characters of lowercase letters, digits and '-', "
            "starting and ending with a letter or digit"
        )
    return slug


def create_tenant(
    session: Session, *, slug: str, name: str, plan: str = "free", actor: str = "system"
) -> Tenant:
    validate_slug(slug)
    if session.scalar(select(Tenant.id).where(Tenant.slug == slug)) is not None:
        raise SlugTaken(f"a tenant with slug {slug!r} already exists")
    tenant_id = uuid.uuid4()
    # The tenant's own encryption key, made before the row that names it.
    key_id = key_provider().create_tenant_key(str(tenant_id))
    tenant = Tenant(id=tenant_id, slug=slug, name=name, plan=plan, key_id=key_id)
    session.add(tenant)
    session.flush()
    _audit(session, actor, "tenant.create", tenant, {"slug": slug, "plan": plan})
    return tenant


def get_tenant_by_slug(session: Session, slug: str) -> Tenant | None:
    return session.scalar(select(Tenant).where(Tenant.slug == slug))


def get_tenant(session: Session, tenant_id: uuid.UUID, *, include_deleted: bool = True) -> Tenant:
    tenant = session.get(Tenant, tenant_id)
    if tenant is None or (not include_deleted and tenant.status is TenantStatus.DELETED):
        raise NotFound(f"no tenant with id {tenant_id}")
    return tenant


def list_tenants(
    session: Session, *, status: TenantStatus | None, cursor: str | None, limit: int
) -> tuple[Sequence[Tenant], str | None]:
    query = select(Tenant)
    if status is not None:
        query = query.where(Tenant.status == status)
    return keyset_page(session, query, Tenant, cursor, limit)


def update_tenant(
    session: Session,
    tenant: Tenant,
    *,
    changes: dict[str, object],
    actor: str,
    invalidate_auth: Callable[[], None],
) -> Tenant:
    if tenant.status is TenantStatus.DELETED:
        raise Conflict("a deleted tenant cannot be changed")
    before = {field: _plain(getattr(tenant, field)) for field in changes}
    for field, value in changes.items():
        setattr(tenant, field, TenantStatus(str(value)) if field == "status" else value)
    session.flush()
    if "status" in changes and before["status"] != changes["status"]:
        run_after_commit(session, invalidate_auth)
    if "plan" in changes and before["plan"] != changes["plan"]:
        run_after_commit(session, invalidate_quotas)  # the plan's defaults are its limits
    _audit(session, actor, "tenant.update", tenant, {"before": before, "after": changes})
    return tenant


def delete_tenant(
    session: Session, tenant: Tenant, *, actor: str, invalidate_auth: Callable[[], None]
) -> Tenant:
    """Soft delete: every key is revoked at once and no new job is accepted. Data removal
    (key destruction, objects) follows from the tenant's key being destroyed."""
    if tenant.status is TenantStatus.DELETED:
        return tenant
    now = utcnow()
    tenant.status = TenantStatus.DELETED
    tenant.deleted_at = now
    session.execute(
        update(ApiKey)
        .where(ApiKey.tenant_id == tenant.id, ApiKey.revoked_at.is_(None))
        .values(revoked_at=now)
    )
    session.flush()
    run_after_commit(session, invalidate_auth)
    _audit(session, actor, "tenant.delete", tenant, {})
    return tenant


def _plain(value: object) -> object:
    return value.value if isinstance(value, TenantStatus) else value


def _audit(
    session: Session, actor: str, action: str, tenant: Tenant, details: dict[str, object]
) -> None:
    record_admin_action(
        session,
        actor=actor,
        actor_role="admin",
        action=action,
        target_type="tenant",
        target_id=str(tenant.id),
        tenant_id=tenant.id,
        details=details,
    )
