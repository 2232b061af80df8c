"""Tenant API shapes."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from celeriac.platform.models import SLUG_PATTERN, TenantStatus

Plan = Literal["free", "pro", "enterprise"]


class TenantCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    slug: str = Field(
        pattern=SLUG_PATTERN,
        min_length=3,
        max_length=40,
        description="Lowercase letters, digits and '-'; used in queue names. Unique.",
        examples=["acme-corp"],
    )
    name: str = Field(min_length=1, max_length=200)
    plan: Plan = "free"


class TenantUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(default=None, min_length=1, max_length=200)
    plan: Plan | None = None
    status: Literal["active", "suspended"] | None = Field(
        default=None, description="Suspended tenants' keys answer 403 and no new job starts."
    )


class TenantOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    slug: str
    name: str
    status: TenantStatus
    plan: str
    created_at: datetime
    updated_at: datetime
    deleted_at: datetime | None
    key_destroyed_at: datetime | None = Field(
        description="After deletion: when the tenant's encryption key was destroyed (its "
        "data unreadable from then on)."
    )
    blobs_deleted_at: datetime | None = Field(
        description="After deletion: when the tenant's stored objects were removed."
    )


class TenantKeyRotation(BaseModel):
    tenant_id: uuid.UUID
    key_id: str = Field(description="The tenant's key (KMS key ARN, or keyring key id).")
    rotated_at: datetime
