"""The audit log's read API for admins (the writer is ``celeriac.platform.audit``)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel, ConfigDict

from celeriac.platform import audit
from celeriac.platform.api.deps import AdminDep, SessionDep
from celeriac.platform.api.schemas import Page

router = APIRouter(prefix="/v1/admin/audit-log", tags=["operations (admin)"])


class AuditEntryOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    tenant_id: uuid.UUID | None
    actor: str
    actor_role: str
    action: str
    target_type: str
    target_id: str
    details: dict[str, Any]
    request_id: str | None
    occurred_at: datetime


@router.get("", response_model=Page[AuditEntryOut])
def list_audit_log(
    _admin: AdminDep,
    session: SessionDep,
    tenant_id: uuid.UUID | None = None,
    action: str | None = None,
    cursor: str | None = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 50,
) -> Page[AuditEntryOut]:
    """Admin actions, newest first: who did what to which tenant, with the request id."""
    rows, next_cursor = audit.list_entries(
        session, tenant_id=tenant_id, action=action, cursor=cursor, limit=limit
    )
    return Page(data=[AuditEntryOut.model_validate(e) for e in rows], next_cursor=next_cursor)
