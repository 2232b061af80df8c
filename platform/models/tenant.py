"""Tenants and the per-tenant quota overrides."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import CheckConstraint, ForeignKey, String
from sqlalchemy.orm import Mapped, mapped_column

from celeriac.platform.models.base import Base, TimestampMixin, new_id
from celeriac.platform.models.enums import TenantStatus, checked

# Lowercase letters, digits and "-": safe inside queue names, Redis keys and S3 prefixes.
SLUG_PATTERN = r"^[a-z0-9](?:[a-z0-9-]{1,38})[a-z0-9]$"


class Tenant(TimestampMixin, Base):
    __tablename__ = "tenants"
    __table_args__ = (CheckConstraint("length(slug) between 3 and 40", name="slug_length"),)

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    slug: Mapped[str] = mapped_column(String(40), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    status: Mapped[TenantStatus] = mapped_column(
        checked(TenantStatus, "tenant_status"), default=TenantStatus.ACTIVE
    )
    plan: Mapped[str] = mapped_column(String(40), default="free")
    # Key provider's id for this tenant's key (KMS key ARN or keyring entry).
    key_id: Mapped[str | None] = mapped_column(String(300))
    deleted_at: Mapped[datetime | None]
    # After deletion: when the key was destroyed (KMS: disabled, deletion scheduled) and
    # when the blobs were removed. NULL on a deleted tenant = still to do (beat retries).
    key_destroyed_at: Mapped[datetime | None]
    blobs_deleted_at: Mapped[datetime | None]


class Quota(TimestampMixin, Base):
    """Per-tenant overrides of the plan's limits; NULL means "the plan's default"."""

    __tablename__ = "quotas"

    tenant_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True
    )
    requests_per_second: Mapped[int | None]
    request_burst: Mapped[int | None]
    max_running_jobs: Mapped[int | None]
    jobs_per_month: Mapped[int | None]
    max_payload_bytes: Mapped[int | None]
    max_records_per_job: Mapped[int | None]
    max_webhook_targets: Mapped[int | None]
    # The tenant's share of worker slots against other tenants' (fair dispatch's weight).
    dispatch_weight: Mapped[int | None]
