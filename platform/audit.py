"""Writing the audit log of admin actions, in the caller's transaction."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy.orm import Session

from celeriac.platform.logging import current_context
from celeriac.platform.models import AuditEntry


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
