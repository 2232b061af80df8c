"""Append-only usage records that billing reads."""

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import ForeignKey, Index, Numeric, String
from sqlalchemy.orm import Mapped, mapped_column

from celeriac.platform.models.base import Base, JSONType, utcnow


class UsageRecord(Base):
    """One billable fact. Never updated: a correction is a new record that ``adjusts`` it.

    ``id`` is derived from the cause (``job_<id>:compute.seconds``), so a redelivered task
    or a replayed request inserts nothing new.
    """

    __tablename__ = "usage_records"
    __table_args__ = (
        Index(None, "tenant_id", "metric", "occurred_at"),
        # Billing's keyset pagination across tenants.
        Index(None, "occurred_at", "id"),
    )

    id: Mapped[str] = mapped_column(String(200), primary_key=True)
    # No cascade: a deleted tenant's usage stays for billing.
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="RESTRICT"))
    metric: Mapped[str] = mapped_column(String(60))
    quantity: Mapped[Decimal] = mapped_column(Numeric(24, 6))
    unit: Mapped[str] = mapped_column(String(20))
    occurred_at: Mapped[datetime]
    recorded_at: Mapped[datetime] = mapped_column(default=utcnow)
    properties: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    source: Mapped[str] = mapped_column(String(60))
    adjusts_id: Mapped[str | None] = mapped_column(
        ForeignKey("usage_records.id", ondelete="RESTRICT")
    )
