"""Compute pool (prefork, late acks): claim a task, run its plugin on its input, record
the outcome and, for the last task of a stage, move the job on. The only step module that
imports pandas.

Each step commits its own short transactions; between them it does I/O and computation
with no transaction open, so a slow plugin never holds database locks.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import io
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import pandas as pd
import pyarrow as pa  # type: ignore[import-untyped]
from sqlalchemy.orm import Session

from celeriac.platform.db import transaction
from celeriac.platform.jobs import events as job_events
from celeriac.platform.jobs import lifecycle, payload, repository, task_errors
from celeriac.platform.models import Job, JobStage, JobTask, TaskState, utcnow
from celeriac.platform.queues import TaskName
from celeriac.platform.storage import BlobNotFound
from celeriac.platform.tasks import Publication, Publisher, default_publisher
from celeriac.platform.tenant_data import tenant_blobs
from celeriac.workers.flow import distribution, plan

# Arrow's buffers (Parquet reads, pandas' str columns) from the C library's allocator, not
# the bundled mimalloc, which kept what a big analysis had freed: a 1,000,000-record
# tabular dataset read and combined peaked at 978 MiB of RSS with mimalloc, 778 with this,
# and the read and combine took 4.2-4.6 s of CPU instead of 5.5-5.6 (ADR 0018).
pa.set_memory_pool(pa.system_memory_pool())
_LIBC = ctypes.CDLL(ctypes.util.find_library("c") or None)


def _give_back_freed_memory() -> None:
    """Return the C heap's free pages to the system (glibc's ``malloc_trim``; elsewhere
    nothing). After the partials of a 1,000,000-record tabular dataset are combined and
    dropped, 190 MiB of them stayed in the heap, on top of which the analysis then peaked:
    727 MiB of RSS before the trim, 533 after it (ADR 0018)."""
    trim = getattr(_LIBC, "malloc_trim", None)
    if trim is not None:
        trim(0)


class TransientError(Exception):
    """A failure worth retrying (storage or database briefly unavailable)."""


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
    # ANALYZE and SLICE: the chunk of each of ``inputs``; the job's records, chunks and
    # records per chunk (0: unknown), for a slice that reads only the partials it needs.
    input_chunks: tuple[int, ...] = ()
    records: int = 0
    chunks: int = 0
    chunk_records: int = 0


def claim(tenant_id: str, task_id: str, message_id: str) -> Claimed | None:
    """Claim the task and read everything its run needs, in one transaction."""
    with transaction() as session:

        def ready(task: JobTask, job: Job) -> bool:
            planned = plan.planned_task(job, task.stage, task.task_key)
            if planned is None or not planned.after:
                return True
            before = repository.tasks_by_key(session, job, planned.after)
            return not any(t.state in repository.OPEN_TASK_STATES for t in before)

        claimed = repository.claim_task(
            session, tenant_id, task_id, message_id, plan.lease_seconds(), ready
        )
        if claimed is None:
            return None
        task, job = claimed
        lifecycle.compute_started(session, job, task.started_at or utcnow())
        planned = plan.planned_task(job, task.stage, task.task_key)
        if planned is not None:
            role = planned.role
        else:  # not in today's plan (none such is made): run it as its stage runs tasks
            role = plan.Role.GENERATE if task.stage is JobStage.DATASETS else plan.Role.ANALYZE
        inputs: tuple[str, ...] = ()
        input_chunks: tuple[int, ...] = ()
        dataset_params: dict[str, Any] = {}
        failed_parts: tuple[str, ...] = ()
        if role is plan.Role.MERGE and planned is not None:
            parts = repository.tasks_by_key(session, job, planned.after)
            inputs = tuple(t.output_key or "" for t in parts)
            failed_parts = tuple(
                f"slice {t.chunk} {t.state.value}: {t.error or ''}".strip()
                for t in parts
                if t.state is not TaskState.SUCCEEDED
            )
            if len(parts) != len(planned.after):  # rows are inserted together: never seen
                failed_parts += (f"{len(planned.after) - len(parts)} slice(s) have no task",)
        elif task.stage is JobStage.ANALYSIS:
            dataset = task.input_key.rstrip("/").rsplit("/", 1)[-1]
            partials = [
                (key, t.chunk)
                for t in repository.stage_tasks(session, job, JobStage.DATASETS)
                if t.state is TaskState.SUCCEEDED
                and (key := t.output_key or "").startswith(task.input_key)
            ]
            inputs = tuple(key for key, _ in partials)
            input_chunks = tuple(-1 if chunk is None else chunk for _, chunk in partials)
            dataset_params = _step_params(job, "datasets", dataset)
        section = "datasets" if task.stage is JobStage.DATASETS else "analyzers"
        return Claimed(
            task_id=str(task.id),
            task_key=task.task_key,
            stage=task.stage,
            role=role,
            plugin=task.plugin,
            input_key=task.input_key,
            output_key=task.output_key or "",
            attempts=task.attempts,
            params=_step_params(job, section, task.plugin),
            started_at=task.started_at or utcnow(),
            inputs=inputs,
            dataset_params=dataset_params,
            slice=task.chunk or 0,
            slices=planned.slices if planned is not None else 1,
            failed_parts=failed_parts,
            input_chunks=input_chunks,
            records=job.record_count,
            chunks=int(job.checkpoints.get("payload", {}).get("chunks", 1)),
            chunk_records=plan.chunk_records(job),
        )


def _step_params(job: Job, section: str, name: str) -> dict[str, Any]:
    step = next(s for s in job.pipeline[section] if s["name"] == name)
    return dict(step.get("params") or {})


def finish(
    tenant_id: str,
    job_id: str,
    claimed: Claimed,
    outcome: TaskState,
    error: str | None = None,
    publisher: Publisher | None = None,
) -> bool:
    """Record the task's outcome and, if it was its stage's last open task, move the job
    on: one transaction, holding the job's row so that siblings finishing at the same
    moment commit one after the other and exactly one of them sees the stage done (or,
    for the slices of a row-wise analyzer, that every slice has ended: that one publishes
    the merge). Returns whether this task moved the job to its next stage."""
    with transaction() as session:
        job = repository.touch_job(session, tenant_id, job_id)
        error = task_errors.record(session, tenant_id, claimed.task_id, error)  # details sealed
        repository.finish_task(
            session, tenant_id, claimed.task_id, outcome, started=claimed.started_at, error=error
        )
        job_events.announce_after_commit(session, job_id)  # a progress event for the streams
        if job is None:
            return False
        ref = lifecycle.ref_of(session, job)
        unblocked = _unblocked(session, job, claimed)
        message_ids = repository.assign_messages(session, unblocked, set())
        publications: list[Publication] = [
            ref.message(TaskName.RUN_TASK, message_id=message_ids[t.id], task_id=str(t.id))
            for t in unblocked
        ]
        following = lifecycle.advance_if_done(session, job, claimed.stage)
        if following is not None:
            # The join publishes the next stage's tasks itself (or finalize's message).
            publications += distribution.stage_publications(
                session, job, lifecycle.NEXT_STAGE[claimed.stage]
            )
        (publisher or default_publisher()).after_commit(session, publications)
    return following is not None


def _unblocked(session: Session, job: Job, claimed: Claimed) -> list[JobTask]:
    """The pending tasks that ran after ``claimed`` and everything else they wait for."""
    waiting = [p for p in plan.planned(job, claimed.stage) if claimed.task_key in p.after]
    unblocked = []
    for task in waiting:
        rows = {
            t.task_key: t for t in repository.tasks_by_key(session, job, (*task.after, task.key))
        }
        before_open = any(
            rows[k].state in repository.OPEN_TASK_STATES for k in task.after if k in rows
        )
        row = rows.get(task.key)
        if row is not None and row.state is TaskState.PENDING and not before_open:
            unblocked.append(row)
    return unblocked


def _parquet(frame: pd.DataFrame) -> bytes:
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    return buffer.getvalue()


def _partial(tenant_id: str, key: str) -> pd.DataFrame:
    return pd.read_parquet(io.BytesIO(tenant_blobs().get(tenant_id, key)))


def _dataset(tenant_id: str, claimed: Claimed, name: str, keys: tuple[str, ...]) -> pd.DataFrame:
    from celeriac.workers.compute import combine_partials  # noqa: PLC0415 - compute pool only

    partials = [_partial(tenant_id, key) for key in keys]
    dataset = combine_partials(name, partials, claimed.dataset_params)
    del partials
    _give_back_freed_memory()
    return dataset


def _own_rows(tenant_id: str, claimed: Claimed, name: str) -> pd.DataFrame | None:
    """A slice's rows combined from the partials of its own chunks only, or None where
    that is not sure to be the same rows of the whole dataset; then the caller combines
    the whole, as every slice did before (ADR 0009). Sure when the generator has one row
    per record (``rows_are_records``), every chunk's partial succeeded, each partial read
    has a row per record of its chunk, and ``combine`` accepts the part (it may refuse
    only what it would refuse of the whole: the whole is then left to decide). At
    1,000,000 records in 40 slices this reads 5 partials a slice instead of 200 (ADR 0018)."""
    from celeriac.workers.compute import combine_partials, rows_are_records  # noqa: PLC0415

    records, per_chunk = claimed.records, claimed.chunk_records
    if (
        not per_chunk
        or claimed.input_chunks != tuple(range(claimed.chunks))
        or -(-records // per_chunk) != claimed.chunks
        or not rows_are_records(name)
    ):
        return None
    start, end = plan.slice_rows(records, claimed.slice, claimed.slices)
    chunks = plan.slice_chunks(start, end, per_chunk)
    if not chunks:
        return None
    partials = []
    for chunk in chunks:
        frame = _partial(tenant_id, claimed.inputs[chunk])
        if len(frame) != min(per_chunk, records - chunk * per_chunk):
            return None
        partials.append(frame)
    try:
        part = combine_partials(name, partials, claimed.dataset_params)
    except Exception:  # the whole dataset decides (and raises what it raises)
        return None
    offset = chunks.start * per_chunk
    if len(part) != sum(map(len, partials)):
        return None
    return part.iloc[start - offset : end - offset].set_axis(pd.RangeIndex(start, end))


# ARG001: the arguments every step of a task takes.
def compute(tenant_id: str, job_id: str, claimed: Claimed) -> None:  # noqa: ARG001
    """Run the plugin and write its output blob (deterministic key: a rerun overwrites
    the same object with the same content)."""
    from celeriac.workers.compute import (  # noqa: PLC0415 - pandas: the compute pool only
        analyze_dataset,
        analyze_slice,
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
            if claimed.role is plan.Role.SLICE:
                rows = _own_rows(tenant_id, claimed, dataset_name)
                if rows is None:  # the slice's rows of the whole dataset, as before
                    dataset = _dataset(tenant_id, claimed, dataset_name, claimed.inputs)
                    start, end = plan.slice_rows(len(dataset), claimed.slice, claimed.slices)
                    rows = dataset.iloc[start:end]
                    del dataset
                result = analyze_slice(claimed.plugin, rows, claimed.params)
            else:
                dataset = _dataset(tenant_id, claimed, dataset_name, claimed.inputs)
                result = analyze_dataset(claimed.plugin, dataset, claimed.params)
        blobs.put(tenant_id, claimed.output_key, payload.json_bytes(result))
    except BlobNotFound as exc:
        raise TransientError(f"blob missing: {exc}") from exc
    except OSError as exc:
        raise TransientError(f"{type(exc).__name__}: {exc}") from exc
