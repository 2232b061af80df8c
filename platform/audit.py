"""The audit log of admin actions: written in the caller's transaction, read by admins."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from sqlalchemy import ColumnElement, select
from sqlalchemy.orm import Session

from celeriac.platform.logging import current_context
from celeriac.platform.models import AuditEntry
from celeriac.platform.repository import encode_cursor, keyset_after


def record_admin_action(
    session: Session,
    *,
    actor: str,
    actor_role: str,
    action: str,
    target_type: str,
    target_id: str,
    tenant_id: uuid.UUID | None = None,
    details: dict[str, Any] | None = None,
) -> AuditEntry:
    entry = AuditEntry(
        tenant_id=tenant_id,
        actor=actor,
        actor_role=actor_role,
        action=action,
        target_type=target_type,
        target_id=target_id,
        details=details or {},
        request_id=current_context().get("request_id"),
    )
    session.add(entry)
    return entry


def list_entries(
    session: Session,
    *,
    tenant_id: uuid.UUID | None,
    action: str | None,
    cursor: str | None,
    limit: int,
) -> tuple[Sequence[AuditEntry], str | None]:
    """Audit entries, newest first (keyset on occurred_at, id), by tenant and action."""
    filters: list[ColumnElement[bool]] = []
    if tenant_id is not None:
        filters.append(AuditEntry.tenant_id == tenant_id)
    if action is not None:
        filters.append(AuditEntry.action == action)
    if cursor:
        filters.append(keyset_after(AuditEntry.occurred_at, AuditEntry.id, cursor))
    rows = list(
        session.scalars(
            select(AuditEntry)
            .where(*filters)
            .order_by(AuditEntry.occurred_at.desc(), AuditEntry.id.desc())
            .limit(limit + 1)
        )
    )
    if len(rows) <= limit:
        return rows, None
    last = rows[limit - 1]
    return rows[:limit], encode_cursor(last.occurred_at, last.id)
