"""What each task of the canvas does, as plain functions over the database and the blob
store. The Celery tasks in ``celeriac.workers.tasks`` are thin shells around these.

Each step commits its own short transactions; between them it does I/O and computation
with no transaction open, so a slow plugin never holds database locks.
"""

from __future__ import annotations

import io
import json
import logging
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import pandas as pd
from sqlalchemy import select
from sqlalchemy.orm import Session

from celeriac.platform.db import transaction
from celeriac.platform.models import (
    Job,
    JobStage,
    JobState,
    Priority,
    TaskState,
    Tenant,
    utcnow,
)
from celeriac.platform.settings import get_settings
from celeriac.platform.storage import BlobNotFound
from celeriac.platform.tasks import Publication, publish, publish_many
from celeriac.platform.tenant_data import tenant_blobs
from celeriac.platform.usage.metrics import insert_usage, job_completed_rows
from celeriac.workers.canvas import plan, state

logger = logging.getLogger(__name__)

START_JOB = "celeriac.orchestration.start_job"
FAN_OUT = "celeriac.distribution.fan_out"
RUN_TASK = "celeriac.compute.run_task"
FINALIZE = "celeriac.distribution.finalize"
HELD = "held"

Send = Callable[..., str]
SendMany = Callable[[Sequence[Publication]], list[str]]


class TransientError(Exception):
    """A failure worth retrying (storage or database briefly unavailable)."""


@dataclass(frozen=True)
class JobRef:
    tenant_id: str
    job_id: str
    tenant_slug: str
    band: Priority

    def kwargs(self, **extra: str) -> dict[str, str]:
        return {"tenant_id": self.tenant_id, "job_id": self.job_id, **extra}


# A tenant's slug never changes (the API cannot update it), so each process keeps the ones
# it has read; the bound only caps memory.
_SLUGS: dict[uuid.UUID, str] = {}
_SLUGS_MAX = 10_000


def tenant_slug(session: Session, tenant_id: uuid.UUID) -> str:
    slug = _SLUGS.get(tenant_id)
    if slug is None:
        found = session.scalar(select(Tenant.slug).where(Tenant.id == tenant_id))
        assert found is not None
        if len(_SLUGS) >= _SLUGS_MAX:
            _SLUGS.clear()
        slug = _SLUGS[tenant_id] = found
    return slug


def ref_of(session: Session, job: Job) -> JobRef:
    return JobRef(str(job.tenant_id), str(job.id), tenant_slug(session, job.tenant_id),
                  job.priority)  # fmt: skip


def _send(ref: JobRef, name: str, send: Send, **extra: str) -> str:
    return send(name, band=ref.band, tenant_slug=ref.tenant_slug, kwargs=ref.kwargs(**extra))


# --- orchestration -------------------------------------------------------------------


def start_job(tenant_id: str, job_id: str, send: Send = publish) -> str | None:
    """Mark the job running and hand its current stage to the distributor. A job that is
    already running continues from its last finished stage. A job over its tenant's
    running-job limit stays queued, held, until one of the tenant's jobs ends."""
    with transaction() as session:
        job = state.start(session, tenant_id, job_id)
        if isinstance(job, state.Held):
            logger.info("job held: its tenant runs its limit of %d jobs", job.limit)
            return HELD
        if job is None:
            return None
        ref, stage = ref_of(session, job), job.stage or JobStage.DATASETS
    if stage is JobStage.FINALIZE:
        _send(ref, FINALIZE, send)
    else:
        _send(ref, FAN_OUT, send, stage=stage.value)
    return stage.value


# --- distribution --------------------------------------------------------------------


def fan_out(
    tenant_id: str, job_id: str, stage: str, send: Send = publish,
    send_many: SendMany = publish_many,
) -> int:  # fmt: skip
    """Create the stage's tasks (once) and publish every open one; returns how many.

    Publishing an open task twice (reconciler) is harmless: the compute step claims it
    with a compare-and-set and the loser does nothing."""
    with transaction() as session:
        job = state.load_job(session, tenant_id, job_id)
        if job is None or job.state is not JobState.RUNNING or job.stage is not JobStage(stage):
            return 0
        ref = ref_of(session, job)
        open_tasks, inserted = state.ensure_tasks(session, job, plan.planned(job, JobStage(stage)))
        lease = lease_seconds()
        # A running task is republished only when its run has outlived any possible run.
        due = [t for t in open_tasks
               if t.state is TaskState.PENDING or state.lease_expired(t, lease)]  # fmt: skip
        message_ids = state.assign_messages(session, due, inserted)
    if not open_tasks:
        join(tenant_id, job_id, JobStage(stage), send)
        return 0
    send_many([
        Publication(RUN_TASK, ref.band, ref.tenant_slug, ref.kwargs(task_id=str(t.id)),
                    task_id=message_ids[t.id])
        for t in due
    ])  # fmt: skip
    return len(due)


def lease_seconds() -> float:
    """How long a compute run may last: the hard time limit, plus a margin."""
    return get_settings().workers.compute_hard_time_limit + 30.0


NEXT_STAGE = {JobStage.DATASETS: JobStage.ANALYSIS, JobStage.ANALYSIS: JobStage.FINALIZE}


def join(tenant_id: str, job_id: str, stage: JobStage, send: Send = publish) -> bool:
    """If ``stage`` has no open task left, move the job on (once) and dispatch what comes
    next. Called after each task's result is committed, so the last one always sees it."""
    with transaction() as session:
        job = state.load_job(session, tenant_id, job_id)
        following = _advance_if_done(session, job, stage)
        if following is None:
            return False
        assert job is not None
        ref = ref_of(session, job)
    _dispatch(ref, following, send)
    return True


def _advance_if_done(session: Session, job: Job | None, stage: JobStage) -> JobStage | None:
    if job is None or job.state is not JobState.RUNNING:
        return None
    if state.stage_open_count(session, job, stage) > 0:
        return None
    following = NEXT_STAGE[stage]
    if not state.advance(session, job, stage, following):
        return None
    return following


def _dispatch(ref: JobRef, following: JobStage, send: Send) -> None:
    if following is JobStage.FINALIZE:
        _send(ref, FINALIZE, send)
    else:
        _send(ref, FAN_OUT, send, stage=following.value)


# --- compute -------------------------------------------------------------------------


@dataclass(frozen=True)
class Claimed:
    task_id: str
    stage: JobStage
    plugin: str
    input_key: str
    output_key: str
    attempts: int
    params: dict[str, Any]
    started_at: datetime
    # Analysis only: the dataset's partial outputs that succeeded, and its parameters.
    inputs: tuple[str, ...] = ()
    dataset_params: dict[str, Any] = field(default_factory=dict)


def claim(tenant_id: str, task_id: str, message_id: str) -> Claimed | None:
    """Claim the task and read everything its run needs, in one transaction."""
    with transaction() as session:
        claimed = state.claim(session, tenant_id, task_id, message_id, lease_seconds())
        if claimed is None:
            return None
        task, job = claimed
        inputs: tuple[str, ...] = ()
        dataset_params: dict[str, Any] = {}
        if task.stage is JobStage.ANALYSIS:
            dataset = task.input_key.rstrip("/").rsplit("/", 1)[-1]
            inputs = tuple(
                key
                for t in state.stage_tasks(session, job, JobStage.DATASETS)
                if t.state is TaskState.SUCCEEDED
                and (key := t.output_key or "").startswith(task.input_key)
            )
            dataset_params = _step_params(job, "datasets", dataset)
        section = "datasets" if task.stage is JobStage.DATASETS else "analyzers"
        return Claimed(
            task_id=str(task.id), stage=task.stage, plugin=task.plugin,
            input_key=task.input_key, output_key=task.output_key or "",
            attempts=task.attempts, params=_step_params(job, section, task.plugin),
            started_at=task.started_at or utcnow(), inputs=inputs,
            dataset_params=dataset_params,
        )  # fmt: skip


def _step_params(job: Job, section: str, name: str) -> dict[str, Any]:
    step = next(s for s in job.pipeline[section] if s["name"] == name)
    return dict(step.get("params") or {})


def finish(
    tenant_id: str, job_id: str, claimed: Claimed, outcome: TaskState,
    error: str | None = None, send: Send = publish,
) -> bool:  # fmt: skip
    """Record the task's outcome and, if it was its stage's last open task, move the job
    on: one transaction, holding the job's row so that siblings finishing at the same
    moment commit one after the other and exactly one of them sees the stage done."""
    with transaction() as session:
        job = state.lock_job(session, tenant_id, job_id)
        state.finish(session, claimed.task_id, outcome, started=claimed.started_at, error=error)
        following = _advance_if_done(session, job, claimed.stage)
        if following is None:
            return False
        assert job is not None
        ref = ref_of(session, job)
    _dispatch(ref, following, send)
    return True


def _records(raw: bytes) -> list[dict[str, Any]]:
    return [json.loads(line) for line in raw.splitlines() if line.strip()]


def _parquet(frame: pd.DataFrame) -> bytes:
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    return buffer.getvalue()


def compute(tenant_id: str, job_id: str, claimed: Claimed) -> None:
    """Run the plugin and write its output blob (deterministic key: a rerun overwrites
    the same object with the same content)."""
    from celeriac.workers.compute import analyze_dataset, combine_partials, generate_partial

    blobs = tenant_blobs()
    try:
        if claimed.stage is JobStage.DATASETS:
            records = _records(blobs.get(tenant_id, claimed.input_key))
            frame = generate_partial(claimed.plugin, records, claimed.params)
            blobs.put(tenant_id, claimed.output_key, _parquet(frame))
            return
        dataset_name = claimed.input_key.rstrip("/").rsplit("/", 1)[-1]
        if not claimed.inputs:
            raise ValueError(f"dataset {dataset_name!r} has no rows: every chunk of it failed")
        partials = [
            pd.read_parquet(io.BytesIO(blobs.get(tenant_id, key))) for key in claimed.inputs
        ]
        dataset = combine_partials(dataset_name, partials, claimed.dataset_params)
        result = analyze_dataset(claimed.plugin, dataset, claimed.params)
        body = json.dumps(result, allow_nan=False, separators=(",", ":")).encode()
        blobs.put(tenant_id, claimed.output_key, body)
    except BlobNotFound as exc:
        raise TransientError(f"blob missing: {exc}") from exc
    except OSError as exc:
        raise TransientError(f"{type(exc).__name__}: {exc}") from exc


# --- finalize ------------------------------------------------------------------------


def finalize(tenant_id: str, job_id: str, send: Send = publish) -> JobState | None:
    """Assemble the result document, end the job (succeeded / partial / failed) and
    record its usage, in one transaction with the state change."""
    with transaction() as session:
        job = state.load_job(session, tenant_id, job_id)
        if job is None or job.state is not JobState.RUNNING:
            return None
        tasks = state.stage_tasks(session, job, JobStage.DATASETS)
        tasks += state.stage_tasks(session, job, JobStage.ANALYSIS)
        analysis_keys = [
            (t.task_key, t.output_key)
            for t in tasks
            if t.stage is JobStage.ANALYSIS and t.state is TaskState.SUCCEEDED
        ]
        failures = [t for t in tasks if t.state in (TaskState.FAILED, TaskState.TIMED_OUT)]
        compute_ms = sum(t.duration_ms or 0 for t in tasks)
    blobs = tenant_blobs()
    analyses: dict[str, dict[str, Any]] = {}
    for task_key, output_key in analysis_keys:
        _, analyzer, dataset = task_key.split("/")
        analyses.setdefault(analyzer, {})[dataset] = json.loads(
            blobs.get(tenant_id, output_key or "")
        )
    if not analyses:
        outcome = JobState.FAILED
    elif failures:
        outcome = JobState.PARTIAL
    else:
        outcome = JobState.SUCCEEDED
    errors = [{"stage": t.stage.value, "plugin": t.plugin, "chunk": t.chunk,
               "state": t.state.value, "error": t.error} for t in failures]  # fmt: skip
    document = {"job_id": job_id, "state": outcome.value, "analyses": analyses, "errors": errors}
    with transaction() as session:
        job = state.load_job(session, tenant_id, job_id)
        assert job is not None
        key = plan.result_key(job)
        written = blobs.put(tenant_id, key, json.dumps(document, separators=(",", ":")).encode())
        error = f"{len(failures)} task(s) failed" if failures else None
        if not state.end_job(session, job, outcome, result_key=key, error=error):
            return None
        _record_usage(session, job, outcome, compute_ms, written)
        released = release_held(session, job.tenant_id)
    start_released(released, send)
    return outcome


def release_held(session: Session, tenant_id: uuid.UUID) -> list[JobRef]:
    """In the transaction that ended one of the tenant's jobs: the held jobs its free
    slots take now (publish them with :func:`start_released` after the commit)."""
    return [ref_of(session, job) for job in state.release_held(session, tenant_id)]


def start_released(refs: Sequence[JobRef], send: Send = publish) -> None:
    for ref in refs:
        try:
            _send(ref, START_JOB, send)
        except Exception:
            # The job is queued and no longer held: the reconciler re-dispatches it.
            logger.exception("publishing start_job of a released job failed",
                             extra={"job_id": ref.job_id})  # fmt: skip


def _record_usage(
    session: Session, job: Job, outcome: JobState, compute_ms: int, written: int
) -> None:
    """Usage of a finished job; unique ids make a redelivered finalize insert nothing."""
    insert_usage(session, job_completed_rows(
        job, outcome, source="finalize", compute_ms=compute_ms, stored_bytes=written))  # fmt: skip
