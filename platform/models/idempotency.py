"""Stored answers for ``Idempotency-Key`` replays."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import ForeignKey, Index, LargeBinary, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from celeriac.platform.models.base import Base, JSONType, new_id, utcnow
from celeriac.platform.models.enums import IdempotencyState, checked


class IdempotencyKey(Base):
    """One (caller, route, key): its request digest and, once answered, the answer.

    ``principal`` is ``tenant:<id>`` for tenant keys (every key of a tenant shares the
    namespace) or ``admin:<subject>`` for admin tokens, which have no tenant.
    """

    __tablename__ = "idempotency_keys"
    __table_args__ = (
        UniqueConstraint("principal", "route", "key"),
        Index(None, "tenant_id", "created_at"),
        Index(None, "expires_at"),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    principal: Mapped[str] = mapped_column(String(250))
    tenant_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("tenants.id", ondelete="CASCADE")
    )
    route: Mapped[str] = mapped_column(String(200))
    key: Mapped[str] = mapped_column(String(255))
    # SHA-256 of the request body: the same key with another body is refused.
    request_digest: Mapped[str] = mapped_column(String(64))
    state: Mapped[IdempotencyState] = mapped_column(
        checked(IdempotencyState, "idempotency_state"), default=IdempotencyState.IN_FLIGHT
    )
    response_status: Mapped[int | None]
    response_headers: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    response_body: Mapped[bytes | None] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime]
