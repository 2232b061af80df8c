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

import orjson
import pandas as pd
from sqlalchemy.orm import Session

from celeriac.platform.db import transaction
from celeriac.platform.jobs import payload
from celeriac.platform.models import (
    Job,
    JobStage,
    JobState,
    JobTask,
    Priority,
    TaskState,
    utcnow,
)
from celeriac.platform.settings import get_settings
from celeriac.platform.storage import BlobNotFound
from celeriac.platform.tasks import Publication, publish, publish_many
from celeriac.platform.tenant_data import tenant_blobs
from celeriac.platform.tenants.service import tenant_profile
from celeriac.platform.usage.metrics import insert_usage, job_completed_rows
from celeriac.platform.webhooks import events
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
# it has read; the bound only caps memory. A process that has not read it yet (a new pool
# process or pod) gets it from the tenant profile in the shared cache.
_SLUGS: dict[uuid.UUID, str] = {}
_SLUGS_MAX = 10_000


def tenant_slug(session: Session, tenant_id: uuid.UUID) -> str:
    slug = _SLUGS.get(tenant_id)
    if slug is None:
        found = tenant_profile(session, tenant_id).slug
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
        planned = plan.planned(job, JobStage(stage))
        open_tasks, inserted = state.ensure_tasks(session, job, planned)
        lease = lease_seconds()
        # A task that runs after others (a merge after its slices) waits for them: the
        # last of them to end publishes it (finish), or a later fan-out does.
        open_keys = {t.task_key for t in open_tasks}
        waiting = {p.key for p in planned if open_keys.intersection(p.after)}
        # A running task is republished only when its run has outlived any possible run.
        due = [t for t in open_tasks if t.task_key not in waiting
               and (t.state is TaskState.PENDING or state.lease_expired(t, lease))]  # fmt: skip
        order = {p.key: index for index, p in enumerate(planned)}
        due.sort(key=lambda t: order.get(t.task_key, len(order)))  # published in plan order
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
    task_key: str
    stage: JobStage
    role: plan.Role
    plugin: str
    input_key: str
    output_key: str
    attempts: int
    params: dict[str, Any]
    started_at: datetime
    # ANALYZE and SLICE: the dataset's partial outputs that succeeded, and its parameters;
    # MERGE: the outputs of its slices.
    inputs: tuple[str, ...] = ()
    dataset_params: dict[str, Any] = field(default_factory=dict)
    # SLICE: which slice of how many.
    slice: int = 0
    slices: int = 1
    # MERGE: why slices did not succeed (then there is nothing to merge).
    failed_parts: tuple[str, ...] = ()


def claim(tenant_id: str, task_id: str, message_id: str) -> Claimed | None:
    """Claim the task and read everything its run needs, in one transaction."""
    with transaction() as session:

        def ready(task: JobTask, job: Job) -> bool:
            planned = plan.planned_task(job, task.stage, task.task_key)
            if planned is None or not planned.after:
                return True
            before = state.tasks_by_key(session, job, planned.after)
            return not any(t.state in state.OPEN_TASK_STATES for t in before)

        claimed = state.claim(session, tenant_id, task_id, message_id, lease_seconds(), ready)
        if claimed is None:
            return None
        task, job = claimed
        planned = plan.planned_task(job, task.stage, task.task_key)
        if planned is not None:
            role = planned.role
        else:  # not in today's plan (none such is made): run it as its stage runs tasks
            role = plan.Role.GENERATE if task.stage is JobStage.DATASETS else plan.Role.ANALYZE
        inputs: tuple[str, ...] = ()
        dataset_params: dict[str, Any] = {}
        failed_parts: tuple[str, ...] = ()
        if role is plan.Role.MERGE and planned is not None:
            parts = state.tasks_by_key(session, job, planned.after)
            inputs = tuple(t.output_key or "" for t in parts)
            failed_parts = tuple(f"slice {t.chunk} {t.state.value}: {t.error or ''}".strip()
                                 for t in parts if t.state is not TaskState.SUCCEEDED)  # fmt: skip
            if len(parts) != len(planned.after):  # rows are inserted together: never seen
                failed_parts += (f"{len(planned.after) - len(parts)} slice(s) have no task",)
        elif task.stage is JobStage.ANALYSIS:
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
            task_id=str(task.id), task_key=task.task_key, stage=task.stage, role=role,
            plugin=task.plugin, input_key=task.input_key, output_key=task.output_key or "",
            attempts=task.attempts, params=_step_params(job, section, task.plugin),
            started_at=task.started_at or utcnow(), inputs=inputs,
            dataset_params=dataset_params, slice=task.chunk or 0,
            slices=planned.slices if planned is not None else 1, failed_parts=failed_parts,
        )  # fmt: skip


def _step_params(job: Job, section: str, name: str) -> dict[str, Any]:
    step = next(s for s in job.pipeline[section] if s["name"] == name)
    return dict(step.get("params") or {})


def finish(
    tenant_id: str, job_id: str, claimed: Claimed, outcome: TaskState,
    error: str | None = None, send: Send = publish, send_many: SendMany = publish_many,
) -> bool:  # fmt: skip
    """Record the task's outcome and, if it was its stage's last open task, move the job
    on: one transaction, holding the job's row so that siblings finishing at the same
    moment commit one after the other and exactly one of them sees the stage done (or,
    for the slices of a row-wise analyzer, that every slice has ended: that one publishes
    the merge)."""
    with transaction() as session:
        job = state.lock_job(session, tenant_id, job_id)
        state.finish(session, claimed.task_id, outcome, started=claimed.started_at, error=error)
        if job is None:
            return False
        unblocked = _unblocked(session, job, claimed)
        message_ids = state.assign_messages(session, unblocked, set())
        following = _advance_if_done(session, job, claimed.stage)
        ref = ref_of(session, job)
    if unblocked:
        send_many([
            Publication(RUN_TASK, ref.band, ref.tenant_slug, ref.kwargs(task_id=str(t.id)),
                        task_id=message_ids[t.id])
            for t in unblocked
        ])  # fmt: skip
    if following is None:
        return False
    _dispatch(ref, following, send)
    return True


def _unblocked(session: Session, job: Job, claimed: Claimed) -> list[JobTask]:
    """The pending tasks that ran after ``claimed`` and everything else they wait for."""
    waiting = [p for p in plan.planned(job, claimed.stage) if claimed.task_key in p.after]
    unblocked = []
    for task in waiting:
        rows = {t.task_key: t for t in state.tasks_by_key(session, job, (*task.after, task.key))}
        before_open = any(rows[k].state in state.OPEN_TASK_STATES for k in task.after if k in rows)
        row = rows.get(task.key)
        if row is not None and row.state is TaskState.PENDING and not before_open:
            unblocked.append(row)
    return unblocked


def _parquet(frame: pd.DataFrame) -> bytes:
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    return buffer.getvalue()


def _json(value: Any) -> bytes:
    """An analysis result (JSON-safe: no NaN, string keys) as JSON. orjson writes the
    100,000 records of a sentiment result in 10 ms, json in 60 to 130; it refuses only
    integers beyond 64 bits, which json writes."""
    try:
        return orjson.dumps(value)
    except TypeError:
        return json.dumps(value, allow_nan=False, separators=(",", ":")).encode()


def compute(tenant_id: str, job_id: str, claimed: Claimed) -> None:
    """Run the plugin and write its output blob (deterministic key: a rerun overwrites
    the same object with the same content)."""
    from celeriac.workers.compute import (
        analyze_dataset,
        analyze_slice,
        combine_partials,
        generate_partial,
        merge_analyses,
    )

    blobs = tenant_blobs()
    try:
        if claimed.role is plan.Role.GENERATE:
            raw = blobs.get(tenant_id, claimed.input_key)
            # The records are freed before the collector resumes: a collection after the
            # parse would walk them all for nothing (0.34 s of the bigjob's compute CPU,
            # at the first allocation once the parse was over). A generator's own
            # reference cycles, if it makes any, are collected once it has returned.
            with payload.collector_paused():
                records = payload.records(raw)
                frame = generate_partial(claimed.plugin, records, claimed.params)
                del records
            blobs.put(tenant_id, claimed.output_key, _parquet(frame))
            return
        if claimed.role is plan.Role.MERGE:
            if claimed.failed_parts:
                raise ValueError("nothing to merge: " + "; ".join(claimed.failed_parts))
            parts = [payload.json_document(blobs.get(tenant_id, key)) for key in claimed.inputs]
            result = merge_analyses(claimed.plugin, parts, claimed.params)
        else:
            dataset_name = claimed.input_key.rstrip("/").rsplit("/", 1)[-1]
            if not claimed.inputs:
                raise ValueError(f"dataset {dataset_name!r} has no rows: every chunk of it failed")
            partials = [
                pd.read_parquet(io.BytesIO(blobs.get(tenant_id, key))) for key in claimed.inputs
            ]
            dataset = combine_partials(dataset_name, partials, claimed.dataset_params)
            if claimed.role is plan.Role.SLICE:
                rows = len(dataset)
                start = rows * claimed.slice // claimed.slices
                end = rows * (claimed.slice + 1) // claimed.slices
                result = analyze_slice(claimed.plugin, dataset.iloc[start:end], claimed.params)
            else:
                result = analyze_dataset(claimed.plugin, dataset, claimed.params)
        blobs.put(tenant_id, claimed.output_key, _json(result))
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
        results = {p.key: p for p in plan.planned(job, JobStage.ANALYSIS) if p.gives_result}
        analysis_keys = [
            (results[t.task_key].analyzer_and_dataset, t.output_key)
            for t in tasks
            if t.task_key in results and t.state is TaskState.SUCCEEDED
        ]
        failures = [t for t in tasks if t.state in (TaskState.FAILED, TaskState.TIMED_OUT)]
        compute_ms = sum(t.duration_ms or 0 for t in tasks)
    blobs = tenant_blobs()
    analyses: dict[str, dict[str, Any]] = {}
    for (analyzer, dataset), output_key in analysis_keys:
        blob = blobs.get(tenant_id, output_key or "")
        analyses.setdefault(analyzer, {})[dataset] = payload.json_document(blob)
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
        written = blobs.put(tenant_id, key, _json(document))
        error = f"{len(failures)} task(s) failed" if failures else None
        if not state.end_job(session, job, outcome, result_key=key, error=error):
            return None
        _record_usage(session, job, outcome, compute_ms, written)
        events.job_ended(session, job, outcome, error)
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
