"""Crypto-shredding a deleted tenant: destroy its key, then delete its blobs.

``delete_tenant`` (the soft delete) commits first; then, in this order:

1. **Key**: :meth:`KeyProvider.destroy_tenant_key` (KMS: ``DisableKey``, effective at
   once, and ``ScheduleKeyDeletion`` after ``keys.deletion_window_days``). From that moment
   every ciphertext of the tenant, wherever a copy of it lies (a backup, S3's non-current
   versions, a leaked dump), fails with :class:`KeyUnavailable`. Done by the API process
   right after the commit (two KMS calls), so the tenant's data is unreadable when
   ``DELETE`` answers.
2. **Blobs**: ``delete_prefix("tenants/<id>/")``, which may take long for a large tenant,
   runs in beat's sweep (``celeriac.orchestration.destroy_deleted_tenants``) on the
   orchestration pool.

Each step is recorded on the tenant row (``key_destroyed_at``, ``blobs_deleted_at``) only
once it has succeeded, and both steps are idempotent; the sweep picks up every deleted
tenant with a step still open. So a KMS or S3 failure, or a process dying between the
commit and the call, delays the destruction by one sweep interval and never skips it.
Usage records and the audit log are kept (billing needs them; they hold no tenant data).
In ``keys.mode=pooled`` the shared key is not destroyed (step 1 records that nothing was
to be destroyed); the blobs are deleted as above.
"""

from __future__ import annotations

import logging
import uuid

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from celeriac.platform.audit import record_admin_action
from celeriac.platform.db import transaction
from celeriac.platform.jobs import repository as job_repository
from celeriac.platform.models import Tenant, TenantStatus, utcnow
from celeriac.platform.tenant_data import envelope, key_provider, tenant_blobs

logger = logging.getLogger(__name__)

SWEEP_BATCH = 100


def destroy_tenant_key(tenant_id: uuid.UUID) -> bool:
    """Step 1 for a deleted tenant; True once the key is destroyed (now or before)."""
    with transaction() as session:
        tenant = session.get(Tenant, tenant_id)
        if tenant is None or tenant.status is not TenantStatus.DELETED:
            return False
        if tenant.key_destroyed_at is not None:
            return True
        key_id = tenant.key_id
    if key_id:
        key_provider().destroy_tenant_key(key_id)
    envelope().forget_tenant(str(tenant_id))
    tenant_blobs().forget_tenant_job_keys(str(tenant_id))
    with transaction() as session:
        tenant = session.get(Tenant, tenant_id)
        assert tenant is not None
        tenant.key_destroyed_at = utcnow()
        _audit(session, tenant, "tenant.key_destroyed", {"key_id": key_id})
    logger.info("tenant key destroyed", extra={"tenant_id": str(tenant_id)})
    return True


def delete_tenant_blobs(tenant_id: uuid.UUID) -> int | None:
    """Step 2, after step 1; the number of blobs removed, None if not (yet) due."""
    with transaction() as session:
        tenant = session.get(Tenant, tenant_id)
        if tenant is None or tenant.status is not TenantStatus.DELETED:
            return None
        if tenant.key_destroyed_at is None or tenant.blobs_deleted_at is not None:
            return None
    removed = tenant_blobs().delete_tenant(str(tenant_id))
    with transaction() as session:
        tenant = session.get(Tenant, tenant_id)
        assert tenant is not None
        # Its jobs' keys were wrapped under the destroyed key already; drop them anyway,
        # as deleting one job's data does (docs/adr/0015).
        job_repository.destroy_data_keys(session, tenant_id)
        tenant.blobs_deleted_at = utcnow()
        _audit(session, tenant, "tenant.blobs_deleted", {"blobs": removed})
    logger.info("tenant blobs deleted", extra={"tenant_id": str(tenant_id), "blobs": removed})
    return removed


def destroy_tenant_data(tenant_id: uuid.UUID) -> None:
    """Both steps for one tenant, in order."""
    if destroy_tenant_key(tenant_id):
        delete_tenant_blobs(tenant_id)


def destroy_deleted_tenants(limit: int = SWEEP_BATCH) -> int:
    """Beat's sweep: finish the destruction of deleted tenants with a step still open.
    A tenant that fails is logged and left for the next sweep; the others go on."""
    with transaction() as session:
        pending = session.scalars(
            select(Tenant.id)
            .where(
                Tenant.status == TenantStatus.DELETED,
                or_(Tenant.key_destroyed_at.is_(None), Tenant.blobs_deleted_at.is_(None)),
            )
            .order_by(Tenant.deleted_at)
            .limit(limit)
        ).all()
    finished = 0
    for tenant_id in pending:
        try:
            destroy_tenant_data(tenant_id)
            finished += 1
        except Exception:
            logger.exception(
                "tenant data destruction failed; retried at the next sweep",
                extra={"tenant_id": str(tenant_id)},
            )
    return finished


def destroy_key_after_commit(tenant_id: uuid.UUID) -> None:
    """The after-commit step of ``delete_tenant``: a failure is logged, not raised (the
    deletion stands, and the sweep retries)."""
    try:
        destroy_tenant_key(tenant_id)
    except Exception:
        logger.exception(
            "tenant key destruction failed; beat's sweep retries it",
            extra={"tenant_id": str(tenant_id)},
        )


def _audit(session: Session, tenant: Tenant, action: str, details: dict[str, object]) -> None:
    record_admin_action(
        session,
        actor="system",
        actor_role="system",
        action=action,
        target_type="tenant",
        target_id=str(tenant.id),
        tenant_id=tenant.id,
        details=details,
    )
