"""Job API shapes."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from celeriac.platform.models import JobStage, JobState, Priority

STEP_NAME = r"^[a-z][a-z0-9_-]{0,99}$"
MetadataValue = str | int | float | bool | None


def _without_nul(value: Any) -> Any:
    """Reject NUL characters anywhere in a JSON value stored in a JSONB column, which
    PostgreSQL refuses (the job would fail to store, whatever the client retried)."""
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, str) and "\x00" in item:
            raise ValueError("text may not contain NUL characters (\\u0000)")
        if isinstance(item, dict):
            pending.extend(item.keys())
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
    return value


class PipelineStep(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=STEP_NAME, examples=["tabular"])
    params: dict[str, Any] = Field(default_factory=dict)

    _params = field_validator("params")(_without_nul)


class PipelineSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    datasets: list[PipelineStep] = Field(min_length=1, max_length=10)
    analyzers: list[PipelineStep] = Field(min_length=1, max_length=20)


def _check_metadata(metadata: dict[str, MetadataValue]) -> dict[str, MetadataValue]:
    _without_nul(metadata)
    if len(metadata) > 50:
        raise ValueError("at most 50 metadata keys")
    for key, value in metadata.items():
        if not 1 <= len(key) <= 100:
            raise ValueError("metadata keys are 1 to 100 characters")
        if isinstance(value, str) and len(value) > 1000:
            raise ValueError(f"metadata value of {key!r} is longer than 1000 characters")
    return metadata


class JobOptions(BaseModel):
    """What a job runs and how urgently (the form fields of a multipart submission)."""

    model_config = ConfigDict(extra="forbid")

    pipeline: str | PipelineSpec = Field(
        description="A named pipeline (e.g. `full`) or explicit dataset and analyzer steps.",
        examples=["full"],
    )
    priority: Priority = Priority.NORMAL
    metadata: dict[str, MetadataValue] = Field(default_factory=dict)

    _metadata = field_validator("metadata")(_check_metadata)

    def pipeline_spec(self) -> str | dict[str, Any]:
        return (
            self.pipeline.model_dump() if isinstance(self.pipeline, PipelineSpec) else self.pipeline
        )


class JobCreate(JobOptions):
    """A job with inline records (for files, send multipart/form-data instead)."""

    records: list[dict[str, Any]] = Field(min_length=1, description="JSON objects to process.")


class JobAccepted(BaseModel):
    id: uuid.UUID
    state: JobState
    priority: Priority
    record_count: int
    created_at: datetime
    status_url: str
    results_url: str


class StageProgress(BaseModel):
    total: int = 0
    pending: int = 0
    running: int = 0
    succeeded: int = 0
    failed: int = 0
    timed_out: int = 0
    cancelled: int = 0


class TaskError(BaseModel):
    stage: JobStage
    plugin: str
    chunk: int | None
    state: str
    error: str | None
    attempts: int


class WaitingReason(BaseModel):
    """Why a queued job waits, from the dispatcher's state at the time of the read."""

    reason: str = Field(
        description="`running-job-limit`, `queued-behind-own-tasks`, `fair-share` or "
        "`tenant-suspended`.",
        examples=["running-job-limit"],
    )
    detail: str
    limit: int | None = None
    running: int | None = None
    ahead: int | None = None
    band: str | None = None
    active_tenants: int | None = None


class JobRerun(BaseModel):
    """What a re-run changes; a field left out is the original job's."""

    model_config = ConfigDict(extra="forbid")

    pipeline: str | PipelineSpec | None = None
    priority: Priority | None = None
    metadata: dict[str, MetadataValue] | None = None

    @field_validator("metadata")
    @classmethod
    def _metadata(cls, value: dict[str, MetadataValue] | None) -> dict[str, MetadataValue] | None:
        return None if value is None else _check_metadata(value)


class JobOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    state: JobState
    priority: Priority
    stage: JobStage | None
    pipeline: dict[str, Any]
    record_count: int
    payload_bytes: int
    metadata: dict[str, Any]
    error: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    held_since: datetime | None = Field(
        default=None,
        description="Set while the job waits, queued, for a free slot of the tenant's "
        "max_running_jobs quota (GET /v1/quotas).",
    )
    duration_ms: int | None = None
    rerun_of: uuid.UUID | None = Field(
        default=None, description="The job whose stored records this one re-ran."
    )
    data_deleted_at: datetime | None = Field(
        default=None,
        description="When the job's records, intermediate data and results were deleted "
        "(DELETE /v1/jobs/{id}, or retention).",
    )
    expires_at: datetime | None = Field(
        default=None,
        description="When retention deletes the finished job's data (its plan's "
        "retention_days after it finished; GET /v1/quotas).",
    )
    waiting_reason: WaitingReason | None = Field(
        default=None, description="Why a queued job is not running yet."
    )
    progress: dict[str, StageProgress] = Field(default_factory=dict)
    errors: list[TaskError] = Field(default_factory=list)
