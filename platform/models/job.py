"""Jobs and the compute tasks they run."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import ForeignKey, Index, LargeBinary, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from celeriac.platform.models.base import Base, JSONType, TimestampMixin, new_id
from celeriac.platform.models.enums import JobStage, JobState, Priority, TaskState, checked


class Job(TimestampMixin, Base):
    __tablename__ = "jobs"
    __table_args__ = (
        Index(None, "tenant_id", "created_at"),
        Index(None, "tenant_id", "state", "created_at"),
        # The reconciler's scan for jobs that stopped moving.
        Index(None, "state", "updated_at"),
        # Retention's sweep: a tenant's finished jobs, oldest first.
        Index(None, "tenant_id", "finished_at"),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    priority: Mapped[Priority] = mapped_column(
        checked(Priority, "priority"), default=Priority.NORMAL
    )
    # Resolved pipeline: dataset generators and analyzers with their parameters.
    pipeline: Mapped[dict[str, Any]] = mapped_column(JSONType)
    state: Mapped[JobState] = mapped_column(checked(JobState, "job_state"), default=JobState.QUEUED)
    stage: Mapped[JobStage | None] = mapped_column(checked(JobStage, "job_stage"))
    # Finished stages with what the next stage needs ({"datasets": {...blob keys}}).
    checkpoints: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    payload_key: Mapped[str] = mapped_column(String(500))
    result_key: Mapped[str | None] = mapped_column(String(500))
    record_count: Mapped[int] = mapped_column(default=0)
    payload_bytes: Mapped[int] = mapped_column(default=0)
    job_metadata: Mapped[dict[str, Any]] = mapped_column("metadata", JSONType, default=dict)
    error: Mapped[str | None] = mapped_column(Text)
    # Times the flow was (re)dispatched; the reconciler bounds it.
    dispatch_count: Mapped[int] = mapped_column(default=0)
    started_at: Mapped[datetime | None]
    # When the first of its compute tasks was claimed: the end of its queue wait (set
    # once, by a compare-and-set, so a redelivered task does not move it).
    compute_started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    # Set while a queued job waits for a free slot of its tenant's max_running_jobs quota:
    # the orchestrator deferred it, and the end of one of the tenant's jobs releases it.
    held_since: Mapped[datetime | None]
    # The job this one re-runs on the stored payload of (POST /v1/jobs/{id}/rerun).
    rerun_of: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("jobs.id", ondelete="SET NULL"))
    # Set when the job's payload, intermediate and result blobs were deleted (by the tenant,
    # or by retention): the row stays, for listings and for its usage records.
    data_deleted_at: Mapped[datetime | None]
    # The job's own data key, wrapped under the tenant's key (an envelope); every blob of
    # the job is encrypted under it. Nulled when the job's data is deleted: a crypto-shred
    # of every copy of its blobs. NULL on a job submitted before per-job keys (its blobs
    # are under the tenant's data key). docs/adr/0015.
    data_key: Mapped[bytes | None] = mapped_column(LargeBinary)


class JobTask(TimestampMixin, Base):
    """One compute task of a job: one plugin over one chunk or dataset."""

    __tablename__ = "job_tasks"
    __table_args__ = (
        # Deterministic per job, so a redelivered message finds its row instead of adding one.
        UniqueConstraint("tenant_id", "job_id", "task_key"),
        Index(None, "tenant_id", "job_id", "stage"),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    job_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    task_key: Mapped[str] = mapped_column(String(300))
    stage: Mapped[JobStage] = mapped_column(checked(JobStage, "job_stage"))
    plugin: Mapped[str] = mapped_column(String(100))
    plugin_version: Mapped[str] = mapped_column(String(40), default="")
    chunk: Mapped[int | None]
    input_key: Mapped[str] = mapped_column(String(500))
    output_key: Mapped[str | None] = mapped_column(String(500))
    state: Mapped[TaskState] = mapped_column(
        checked(TaskState, "task_state"), default=TaskState.PENDING
    )
    attempts: Mapped[int] = mapped_column(default=0)
    celery_task_id: Mapped[str | None] = mapped_column(String(64))
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    duration_ms: Mapped[int | None]
    # Clear: the exception's class and a fixed sentence; the message (which may quote
    # record values) is error_detail, encrypted under the tenant's key (jobs/task_errors).
    error: Mapped[str | None] = mapped_column(Text)
    error_detail: Mapped[bytes | None] = mapped_column(LargeBinary)
