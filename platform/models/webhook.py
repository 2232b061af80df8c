"""Webhook targets, the messages sent to them, deliveries and every attempt."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import ForeignKey, Index, LargeBinary, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from celeriac.platform.models.base import Base, JSONType, TimestampMixin, new_id, utcnow
from celeriac.platform.models.enums import (
    AttemptTrigger,
    DeliveryState,
    TargetState,
    checked,
)


class WebhookTarget(TimestampMixin, Base):
    __tablename__ = "webhook_targets"
    __table_args__ = (Index(None, "tenant_id", "created_at"),)

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    url: Mapped[str] = mapped_column(String(2048))
    description: Mapped[str] = mapped_column(String(500), default="")
    # Event-type filters such as "job.*" or "job.succeeded".
    event_types: Mapped[list[str]] = mapped_column(JSONType)
    # Envelope-encrypted signing secrets (the tenant's data key); never stored in clear.
    secret_ciphertext: Mapped[bytes] = mapped_column(LargeBinary)
    previous_secret_ciphertext: Mapped[bytes | None] = mapped_column(LargeBinary)
    previous_secret_expires_at: Mapped[datetime | None]
    state: Mapped[TargetState] = mapped_column(
        checked(TargetState, "target_state"), default=TargetState.ENABLED
    )
    disabled_reason: Mapped[str | None] = mapped_column(String(200))
    # Start of the current run of consecutive failures; any success clears it.
    failing_since: Mapped[datetime | None]
    max_deliveries_per_second: Mapped[float | None]


class WebhookMessage(Base):
    """One event for a tenant; the same ``id`` is sent on every attempt to every target."""

    __tablename__ = "webhook_messages"
    __table_args__ = (
        Index(None, "tenant_id", "created_at"),
        UniqueConstraint("tenant_id", "event_key"),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    event_type: Mapped[str] = mapped_column(String(100))
    # What caused it (e.g. "job:<id>:finished"): makes enqueueing the same event a no-op.
    event_key: Mapped[str] = mapped_column(String(200))
    # Empty since migration 0012: the payload holds tenant metadata, so it is stored
    # encrypted under the tenant's key in sealed_payload (platform/webhooks/payloads.py).
    payload: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    sealed_payload: Mapped[bytes | None] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class WebhookDelivery(TimestampMixin, Base):
    """The state of one message's delivery to one target."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        UniqueConstraint("tenant_id", "message_id", "target_id"),
        Index(None, "tenant_id", "target_id", "created_at"),
        # Beat's scan for due retries.
        Index(None, "state", "next_attempt_at"),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    message_id: Mapped[str] = mapped_column(ForeignKey("webhook_messages.id", ondelete="CASCADE"))
    target_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("webhook_targets.id", ondelete="CASCADE")
    )
    state: Mapped[DeliveryState] = mapped_column(
        checked(DeliveryState, "delivery_state"), default=DeliveryState.PENDING
    )
    attempt_count: Mapped[int] = mapped_column(default=0)
    next_attempt_at: Mapped[datetime | None]
    last_attempt_at: Mapped[datetime | None]


class WebhookAttempt(Base):
    """One HTTP attempt, kept for the tenant's delivery log."""

    __tablename__ = "webhook_attempts"
    __table_args__ = (
        Index(None, "tenant_id", "target_id", "attempted_at"),
        Index(None, "tenant_id", "delivery_id"),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    delivery_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("webhook_deliveries.id", ondelete="CASCADE")
    )
    target_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("webhook_targets.id", ondelete="CASCADE")
    )
    attempted_at: Mapped[datetime] = mapped_column(default=utcnow)
    trigger: Mapped[AttemptTrigger] = mapped_column(checked(AttemptTrigger, "attempt_trigger"))
    status_code: Mapped[int | None]
    # First 8 KiB of the receiver's answer.
    response_body: Mapped[str | None] = mapped_column(Text)
    duration_ms: Mapped[int | None]
    error: Mapped[str | None] = mapped_column(Text)
    next_attempt_at: Mapped[datetime | None]
