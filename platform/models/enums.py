"""The closed vocabularies of the data model, stored as checked strings."""

from __future__ import annotations

from enum import StrEnum

from sqlalchemy import Enum


class TenantStatus(StrEnum):
    ACTIVE = "active"
    SUSPENDED = "suspended"
    DELETED = "deleted"


class Priority(StrEnum):
    """Priority band of a job; part of its queue names."""

    HIGH = "high"
    NORMAL = "normal"
    LOW = "low"


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    PARTIAL = "partial"
    FAILED = "failed"
    CANCELLED = "cancelled"


FINAL_JOB_STATES = frozenset(
    {JobState.SUCCEEDED, JobState.PARTIAL, JobState.FAILED, JobState.CANCELLED}
)


class JobStage(StrEnum):
    """Where a running job is in the canvas; checkpoints are kept per stage."""

    DATASETS = "datasets"
    ANALYSIS = "analysis"
    FINALIZE = "finalize"


class TaskState(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    CANCELLED = "cancelled"


class TargetState(StrEnum):
    ENABLED = "enabled"
    DISABLED = "disabled"


class DeliveryState(StrEnum):
    PENDING = "pending"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


class AttemptTrigger(StrEnum):
    SCHEDULED = "scheduled"
    MANUAL = "manual"
    REPLAY = "replay"


class IdempotencyState(StrEnum):
    IN_FLIGHT = "in_flight"
    COMPLETED = "completed"


def checked(enum: type[StrEnum], name: str) -> Enum:
    """A VARCHAR with a CHECK constraint: no native enum types to migrate on PostgreSQL."""
    return Enum(
        enum,
        name=name,
        native_enum=False,
        create_constraint=True,
        length=max(len(m.value) for m in enum),
        values_callable=lambda e: [m.value for m in e],
        validate_strings=True,
    )
