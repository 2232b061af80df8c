"""Tenant lifecycle. Services flush; the request or command that called them commits."""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Sequence

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from celeriac.platform.audit import record_admin_action
from celeriac.platform.cache import get_cache
from celeriac.platform.crypto import KeyOperationRefused, KeyUnavailable
from celeriac.platform.db import run_after_commit
from celeriac.platform.errors import Conflict, NotFound, ValidationFailed
from celeriac.platform.jobs import lifecycle
from celeriac.platform.models import SLUG_PATTERN, ApiKey, Tenant, TenantStatus, utcnow
from celeriac.platform.quotas.cache import invalidate_quotas
from celeriac.platform.quotas.weights import push_weight_after_commit
from celeriac.platform.repository import keyset_page
from celeriac.platform.tasks import default_publisher
from celeriac.platform.tenant_data import envelope, key_provider
from celeriac.platform.tenants.destruction import destroy_key_after_commit
from celeriac.platform.tenants.profile import profile_entry
from celeriac.platform.webhooks import repository as webhook_repository

_SLUG = re.compile(SLUG_PATTERN)


class InvalidSlug(ValidationFailed):
    pass


class SlugTaken(Conflict):
    pass


class KeyRotationRefused(Conflict):
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
    push_weight_after_commit(session, tenant)
    return tenant


def get_tenant_by_slug(session: Session, slug: str) -> Tenant | None:
    return session.scalar(select(Tenant).where(Tenant.slug == slug))


def get_tenant(session: Session, tenant_id: uuid.UUID, *, include_deleted: bool = True) -> Tenant:
    """The tenant. One rule for a deleted tenant: its own record stays readable (the
    tombstone, ``include_deleted``), its sub-resources (keys, quotas) are 404."""
    tenant = session.get(Tenant, tenant_id)
    if tenant is None:
        raise NotFound(f"no tenant with id {tenant_id}")
    if not include_deleted and tenant.status is TenantStatus.DELETED:
        raise NotFound(f"tenant {tenant_id} is deleted; its keys and quotas are gone")
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
    tenant_id = tenant.id
    run_after_commit(session, lambda: get_cache().invalidate(profile_entry(tenant_id)))
    if "status" in changes and before["status"] != changes["status"]:
        run_after_commit(session, invalidate_auth)
        default_publisher().after_commit(
            session, lifecycle.tenant_status_changed(session, tenant, tenant.status)
        )
    if "plan" in changes and before["plan"] != changes["plan"]:
        run_after_commit(session, invalidate_quotas)  # the plan's defaults are its limits
        push_weight_after_commit(session, tenant)
    _audit(session, actor, "tenant.update", tenant, {"before": before, "after": changes})
    return tenant


def delete_tenant(
    session: Session, tenant: Tenant, *, actor: str, invalidate_auth: Callable[[], None]
) -> Tenant:
    """Soft delete: every API key is revoked at once, no new job is accepted, its queued
    and running jobs end ``cancelled`` (with their events) and every cached entry of the
    tenant (blob ciphertext, profile) is deleted. Once this commits, the tenant's
    encryption key is destroyed (its data is unreadable from then on) and beat's sweep
    deletes its blobs (:mod:`celeriac.platform.tenants.destruction`). Usage records and
    the audit log stay."""
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
    # Nothing more is sent to its receivers (nor billed): a delivery already due finds its
    # target disabled; the cancellations below write their events with no delivery.
    webhook_repository.disable_tenant_targets(session, tenant.id, "the tenant was deleted")
    # Its queued and running jobs end cancelled now, before its key is destroyed.
    default_publisher().after_commit(session, lifecycle.end_tenant_jobs(session, tenant.id))
    run_after_commit(session, invalidate_auth)
    tenant_id = tenant.id
    run_after_commit(session, lambda: destroy_key_after_commit(tenant_id))

    def forget_cached() -> None:
        get_cache().forget_tenant(str(tenant_id))

    run_after_commit(session, forget_cached)
    _audit(session, actor, "tenant.delete", tenant, {})
    return tenant


def rotate_tenant_key(session: Session, tenant: Tenant, *, actor: str) -> Tenant:
    """New key material for the tenant's new data keys (KMS ``RotateKeyOnDemand``; the
    keyring adds a version); everything encrypted before stays readable. This process drops
    its cached data keys at once, other processes when their cache TTL ends."""
    if tenant.status is TenantStatus.DELETED or tenant.key_id is None:
        raise KeyRotationRefused("a deleted tenant's key is destroyed; there is nothing to rotate")
    try:
        key_provider().rotate_tenant_key(tenant.key_id)
    except KeyOperationRefused as exc:
        raise KeyRotationRefused(str(exc)) from None
    except KeyUnavailable as exc:
        raise KeyRotationRefused(f"the tenant's key cannot be rotated: {exc}") from None
    envelope().forget_tenant(str(tenant.id))
    tenant.updated_at = utcnow()
    session.flush()
    _audit(session, actor, "tenant.rotate_key", tenant, {"key_id": tenant.key_id})
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
