"""Typed shapes of the tenant API's answers (pydantic).

They mirror the platform's schemas but are declared here, so that the SDK installs without
the platform. Unknown fields are kept (``extra="allow"``): a newer server adding a field
does not break an older client, and the field is still readable as an attribute.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class Model(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    PARTIAL = "partial"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_final(self) -> bool:
        """True once the job has ended (it will not change state again)."""
        return self not in (JobState.QUEUED, JobState.RUNNING)


FINAL_STATES = frozenset(s for s in JobState if s.is_final)


class Priority(StrEnum):
    HIGH = "high"
    NORMAL = "normal"
    LOW = "low"


class StageProgress(Model):
    total: int = 0
    pending: int = 0
    running: int = 0
    succeeded: int = 0
    failed: int = 0
    timed_out: int = 0
    cancelled: int = 0

    @property
    def done(self) -> int:
        """Tasks of the stage that have ended, whatever their outcome."""
        return self.succeeded + self.failed + self.timed_out + self.cancelled


class TaskError(Model):
    stage: str
    plugin: str
    chunk: int | None = None
    state: str
    error: str | None = None
    attempts: int = 0


class WaitingReason(Model):
    """Why a job that is not running waits (``GET /v1/jobs/{id}``)."""

    reason: str
    detail: str | None = None


class JobData(Model):
    """A job as the API describes it."""

    id: uuid.UUID
    state: JobState
    priority: Priority = Priority.NORMAL
    stage: str | None = None
    pipeline: dict[str, Any] = Field(default_factory=dict)
    record_count: int = 0
    payload_bytes: int = 0
    metadata: dict[str, Any] = Field(default_factory=dict)
    error: str | None = None
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    held_since: datetime | None = None
    duration_ms: int | None = None
    progress: dict[str, StageProgress] = Field(default_factory=dict)
    errors: list[TaskError] = Field(default_factory=list)
    rerun_of: uuid.UUID | None = None
    expires_at: datetime | None = None
    waiting_reason: WaitingReason | None = None


class JobEvent(Model):
    """One event of a job's stream (``GET /v1/jobs/{id}/events``): a state change
    (``type="state"``) or a stage's progress (``type="progress"``)."""

    id: str
    type: str
    state: JobState
    stage: str | None = None
    done: int | None = None
    total: int | None = None
    failed: int | None = None
    final: bool = False


class ApiKey(Model):
    id: uuid.UUID
    tenant_id: uuid.UUID
    name: str
    prefix: str
    last_four: str
    scopes: list[str]
    expires_at: datetime | None = None
    revoked_at: datetime | None = None
    last_used_at: datetime | None = None
    replaced_by_id: uuid.UUID | None = None
    created_at: datetime


class CreatedApiKey(ApiKey):
    """A new key with its secret, which the API shows only this once."""

    key: str


class WebhookTarget(Model):
    id: uuid.UUID
    tenant_id: uuid.UUID
    url: str
    description: str = ""
    event_types: list[str]
    state: str
    disabled_reason: str | None = None
    failing_since: datetime | None = None
    max_deliveries_per_second: float | None = None
    previous_secret_expires_at: datetime | None = None
    created_at: datetime
    updated_at: datetime


class WebhookTargetWithSecret(WebhookTarget):
    """A target with its signing secret, shown when it is created or rotated."""

    secret: str


class WebhookDelivery(Model):
    id: uuid.UUID
    target_id: uuid.UUID
    state: str
    attempt_count: int
    next_attempt_at: datetime | None = None
    last_attempt_at: datetime | None = None


class WebhookMessage(Model):
    id: str = Field(description="``msg_`` and hex: the ``webhook-id`` of its deliveries.")
    event_type: str
    payload: dict[str, Any]
    created_at: datetime
    deliveries: list[WebhookDelivery] = Field(default_factory=list)


class WebhookAttempt(Model):
    id: uuid.UUID
    delivery_id: uuid.UUID
    attempted_at: datetime
    trigger: str
    status_code: int | None = None
    response_body: str | None = None
    duration_ms: int | None = None
    error: str | None = None
    next_attempt_at: datetime | None = None


class Meter(Model):
    limit: int
    used: int
    remaining: int
    resets_at: datetime | None = None


class QuotaStatus(Model):
    plan: str
    limits: dict[str, int]
    usage: dict[str, Meter]


class UsageRecord(Model):
    id: str
    tenant_id: uuid.UUID
    metric: str
    quantity: Decimal
    unit: str
    occurred_at: datetime
    recorded_at: datetime
    source: str
    adjusts_id: str | None = None
    properties: dict[str, Any] = Field(default_factory=dict)


class UsageTotal(Model):
    tenant_id: uuid.UUID
    metric: str
    unit: str
    period_start: datetime
    quantity: Decimal
    records: int


class UsageSummary(Model):
    granularity: str
    data: list[UsageTotal]
