"""Webhook target shapes. The signing secret appears only in ``WebhookTargetWithSecret``,
the answer to creation and rotation."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    Strict,
    StrictInt,
    field_validator,
)

from celeriac.platform.api.schemas import Timestamp
from celeriac.platform.models import AttemptTrigger, DeliveryState, TargetState
from celeriac.platform.webhooks.destinations import MAX_URL_LENGTH
from celeriac.platform.webhooks.service import (
    DEFAULT_PREVIOUS_SECRET_GRACE,
    MAX_PREVIOUS_SECRET_GRACE,
    EventTypeFilter,
)


def _unique(filters: list[EventTypeFilter]) -> list[EventTypeFilter]:
    seen: set[EventTypeFilter] = set()
    for position, f in enumerate(filters):
        if f in seen:
            raise ValueError(f"event type {f.value!r} is listed twice (again at index {position})")
        seen.add(f)
    return filters


TargetUrl = Annotated[
    str,
    Field(
        min_length=1,
        max_length=MAX_URL_LENGTH,
        description="Where events are POSTed: an https URL on a public internet address.",
        examples=["https://hooks.example.com/celeriac"],
    ),
]
EventTypeFilters = Annotated[
    list[EventTypeFilter],
    Field(
        min_length=1,
        description="The events to receive, each listed once: exact types, a family "
        "(`job.*`, `webhook.*`) or `*` for all.",
        examples=[["job.succeeded", "job.failed"]],
    ),
    AfterValidator(_unique),
]
Description = Annotated[str, Field(max_length=500)]
DeliveryRate = Annotated[
    float,
    Strict(),  # a number, not "5" or true
    Field(
        gt=0,
        le=1000,
        description="The most deliveries sent to this target per second; null: no own limit.",
    ),
]


class WebhookTargetCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: TargetUrl
    event_types: EventTypeFilters
    description: Description = ""
    max_deliveries_per_second: DeliveryRate | None = None


def _not_nullable(*fields: str) -> Callable[[dict[str, Any]], None]:
    """A schema hook: ``fields`` are optional but not nullable (``X | None = None`` would
    document null as a value)."""

    def edit(schema: dict[str, Any]) -> None:
        for name in fields:
            prop = schema["properties"][name]
            options = [o for o in prop.pop("anyOf", []) if o.get("type") != "null"]
            if len(options) == 1:
                prop.update(options[0])
            elif options:
                prop["anyOf"] = options
            prop.pop("default", None)

    return edit


class WebhookTargetUpdate(BaseModel):
    """The fields to change; those left out keep their value."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=_not_nullable("url", "event_types"))

    # Left out: kept. url and event_types cannot be null (and the schema says so, below);
    # a null description clears it; a null rate removes the target's own limit.
    url: TargetUrl | None = None
    event_types: EventTypeFilters | None = None
    description: Description | None = None
    max_deliveries_per_second: DeliveryRate | None = None

    @field_validator("url", "event_types")
    @classmethod
    def _not_null(cls, value: object) -> object:
        # Runs only on fields that were sent: leave a field out to keep it; null is no value.
        if value is None:
            raise ValueError("may be left out, but not null")
        return value

    @field_validator("description")
    @classmethod
    def _cleared(cls, value: str | None) -> str:
        return value or ""


class SecretRotation(BaseModel):
    model_config = ConfigDict(extra="forbid")

    previous_secret_expires_in_seconds: StrictInt = Field(
        default=int(DEFAULT_PREVIOUS_SECRET_GRACE.total_seconds()),
        ge=0,
        le=int(MAX_PREVIOUS_SECRET_GRACE.total_seconds()),
        description="How long the replaced secret keeps signing deliveries, beside the new "
        "one (0 = stop now, at most 7 days).",
    )


class WebhookTargetOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    tenant_id: uuid.UUID
    url: str = Field(description="The URL as it will be called (normalised, no fragment).")
    description: str
    event_types: list[str]
    state: TargetState
    disabled_reason: str | None
    failing_since: datetime | None = Field(
        description="Start of the current run of failed deliveries; null after a success."
    )
    max_deliveries_per_second: float | None
    previous_secret_expires_at: datetime | None = Field(
        description="Until when deliveries are also signed with the secret replaced by the "
        "last rotation."
    )
    created_at: datetime
    updated_at: datetime


class WebhookTargetWithSecret(WebhookTargetOut):
    secret: str = Field(
        description="The signing secret (`whsec_` + base64 of 32 bytes). Shown only in this "
        "answer; store it now."
    )


class WebhookDeliveryOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    target_id: uuid.UUID
    state: DeliveryState
    attempt_count: int
    next_attempt_at: datetime | None = Field(description="When the next attempt is due.")
    last_attempt_at: datetime | None


class WebhookMessageOut(BaseModel):
    id: str = Field(description="The `webhook-id` header of every attempt of this message.")
    event_type: str
    payload: dict[str, Any] = Field(description="The body sent (`type`, `timestamp`, `data`).")
    created_at: datetime
    deliveries: list[WebhookDeliveryOut]


class WebhookAttemptOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    delivery_id: uuid.UUID
    attempted_at: datetime
    trigger: AttemptTrigger
    status_code: int | None
    response_body: str | None = Field(description="The first 8 KiB of the answer.")
    duration_ms: int | None
    error: str | None
    next_attempt_at: datetime | None


class ResendRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    target_id: uuid.UUID | None = Field(
        default=None, description="Only this target (default: every target it went to)."
    )


class RecoverRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    since: Timestamp = Field(description="Failed deliveries of messages created since then.")


class DeliveriesRestarted(BaseModel):
    deliveries: list[WebhookDeliveryOut]


class TestEventSent(BaseModel):
    message_id: str
