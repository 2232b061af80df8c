"""API key shapes. The secret appears once, in ``ApiKeyCreated.key``."""

from __future__ import annotations

import uuid
from datetime import datetime

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StrictInt, field_validator

from celeriac.platform.keys.service import Scope
from celeriac.platform.keys.tokens import KeyEnvironment


class ApiKeyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(default="", max_length=200)
    scopes: list[Scope] = Field(min_length=1, examples=[["jobs:write", "jobs:read"]])
    expires_at: AwareDatetime | None = Field(
        default=None, description="When the key stops working; must be in the future."
    )
    environment: KeyEnvironment = KeyEnvironment.LIVE

    @field_validator("scopes")
    @classmethod
    def _unique(cls, scopes: list[Scope]) -> list[Scope]:
        return sorted(set(scopes))


class ApiKeyRoll(BaseModel):
    model_config = ConfigDict(extra="forbid")

    old_key_expires_in_seconds: StrictInt = Field(
        default=24 * 3600,
        ge=0,
        le=7 * 24 * 3600,
        description="How long the old key keeps working (0 = stop now, at most 7 days).",
    )


class ApiKeyOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    tenant_id: uuid.UUID
    name: str
    prefix: str = Field(description="Public part of the key, e.g. ck_live_abc123def456")
    last_four: str
    scopes: list[str]
    expires_at: datetime | None
    revoked_at: datetime | None
    last_used_at: datetime | None = Field(description="Accurate to within 15 minutes.")
    replaced_by_id: uuid.UUID | None
    created_at: datetime


class ApiKeyCreated(ApiKeyOut):
    key: str = Field(description="The full key. Shown only in this answer; store it now.")
