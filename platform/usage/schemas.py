"""Usage API shapes (billing)."""

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

# The columns of a record, in the order of the CSV export.
RECORD_COLUMNS = (
    "id",
    "tenant_id",
    "metric",
    "quantity",
    "unit",
    "occurred_at",
    "recorded_at",
    "source",
    "adjusts_id",
    "properties",
)


class UsageRecordOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str = Field(description="Derived from the record's cause, e.g. job_<id>:compute.seconds")
    tenant_id: uuid.UUID
    metric: str
    quantity: Decimal = Field(description="A decimal number, as a string.")
    unit: str
    occurred_at: datetime
    recorded_at: datetime
    source: str
    adjusts_id: str | None = Field(description="The record this one corrects (adjustments).")
    properties: dict[str, Any]


class UsagePage(BaseModel):
    data: list[UsageRecordOut]
    next_cursor: str | None = Field(
        description="Pass as `cursor` for the next page (also in the `Link` header); null at "
        "the end."
    )


class Granularity(StrEnum):
    HOUR = "hour"
    DAY = "day"
    MONTH = "month"


class UsageTotal(BaseModel):
    tenant_id: uuid.UUID
    metric: str
    unit: str
    period_start: datetime
    quantity: Decimal
    records: int


class UsageSummary(BaseModel):
    granularity: Granularity
    data: list[UsageTotal] = Field(description="Ordered by period, tenant and metric.")


class AdjustmentCreate(BaseModel):
    """A correction of one record: ``quantity`` is added to it (negative to reduce)."""

    model_config = ConfigDict(extra="forbid")

    adjusts_id: str = Field(min_length=1, max_length=200)
    quantity: Decimal = Field(max_digits=24, decimal_places=6)
    reason: str = Field(min_length=1, max_length=500)
