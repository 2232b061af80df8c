"""Quota API shapes."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StrictInt

# Columns are 32-bit integers.
LimitValue = Annotated[StrictInt, Field(ge=1, le=2_000_000_000)]
# Tasks per round-robin turn: beyond 100 one tenant's turn would hold every other tenant
# back for a hundred task slots, which no plan means.
WeightValue = Annotated[StrictInt, Field(ge=1, le=100)]


class QuotaLimits(BaseModel):
    requests_per_second: int = Field(description="Sustained requests per second.")
    request_burst: int = Field(
        description="Requests admitted at once before the sustained rate applies."
    )
    max_running_jobs: int = Field(description="Jobs running at once; more wait, queued.")
    jobs_per_month: int = Field(description="Job submissions per calendar month (UTC).")
    max_payload_bytes: int = Field(description="Largest request body of a job submission.")
    max_records_per_job: int
    max_webhook_targets: int
    dispatch_weight: int = Field(
        description="The tenant's share of worker slots when tenants compete for them: "
        "tasks per turn of the fair dispatcher's round-robin (free 1, pro 2, enterprise 4)."
    )
    retention_days: int = Field(
        description="Days a finished job's data is kept; then "
        "it is deleted (the job's row and usage stay)."
    )


class QuotaOverrides(BaseModel):
    """A tenant's exceptions to its plan. A field left out or null follows the plan."""

    model_config = ConfigDict(extra="forbid")

    requests_per_second: LimitValue | None = None
    request_burst: LimitValue | None = None
    max_running_jobs: LimitValue | None = None
    jobs_per_month: LimitValue | None = None
    max_payload_bytes: LimitValue | None = None
    max_records_per_job: LimitValue | None = None
    max_webhook_targets: LimitValue | None = None
    dispatch_weight: WeightValue | None = None
    retention_days: LimitValue | None = None


class TenantQuotas(BaseModel):
    tenant_id: uuid.UUID
    plan: str
    limits: QuotaLimits = Field(description="In force: the overrides over the plan's defaults.")
    overrides: QuotaOverrides
    plan_defaults: QuotaLimits
    updated_at: datetime | None = Field(description="When the overrides last changed.")


class Meter(BaseModel):
    limit: int
    used: int
    remaining: int
    resets_at: datetime | None = Field(default=None, description="For monthly quotas.")


class QuotaUsage(BaseModel):
    running_jobs: Meter
    jobs_this_month: Meter
    webhook_targets: Meter


class QuotaStatus(BaseModel):
    """The calling tenant's limits and what it uses of them. The request rate's current
    state is in this answer's `RateLimit` header, as on every answer."""

    plan: str
    limits: QuotaLimits
    usage: QuotaUsage
