"""Accepting jobs with group commit: one writer thread stores what concurrent requests submit.

A submission's 202 means its payload is stored, its job and usage rows are committed and its
``start_job`` message is published (or, if the broker failed, the committed job waits for the
reconciler). Doing that per request costs a transaction, a commit and a publish round trip
each, on a thread of the API's pool: at 16 requests in flight the threads spend their time
contending for the GIL and PostgreSQL spends its time committing. Here the event loop hands
each validated submission to one writer thread, which takes every submission waiting at that
moment and stores them together: the payload blobs, one multi-row INSERT of the jobs and of
their usage records in one transaction, then one producer for all the publishes and one fair
dispatcher release per queue. Under load a batch holds as many submissions as arrived during
the previous batch's write; alone, a submission is a batch of one and waits for nothing.

No library does group commit for an ASGI app; the whole mechanism is this module.

A batch is all or nothing only as a first try: when its transaction fails, each submission
is retried alone, so one bad row (a tenant deleted a moment ago, say) fails its own request
and not its neighbours'. A submission that fails leaves nothing behind: its blobs are
deleted and no row was committed.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import queue
import threading
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy.exc import DataError, DBAPIError
from starlette.applications import Starlette

from celeriac.platform import metrics, tracing
from celeriac.platform.db import get_engine
from celeriac.platform.errors import (
    PayloadTooLarge,
    ProblemError,
    ServiceUnavailable,
    ValidationFailed,
)
from celeriac.platform.jobs import lifecycle, repository
from celeriac.platform.jobs.payload import Payload, chunk_key, chunks, no_records
from celeriac.platform.models import JobState, Priority, utcnow
from celeriac.platform.settings import get_settings
from celeriac.platform.storage import NewJobKey, job_blob_key
from celeriac.platform.tasks import Publication, default_publisher
from celeriac.platform.tenant_data import tenant_blobs
from celeriac.platform.usage.metrics import Metric, insert_usage, job_cause, usage_row

logger = logging.getLogger(__name__)

# Enough to absorb any realistic number of requests in flight on one API process, small
# enough that one INSERT's parameters stay well inside PostgreSQL's 65,535 bind limit.
MAX_BATCH = 256


@dataclass
class Submission:
    """A validated job on its way to the database."""

    tenant_id: uuid.UUID
    tenant_slug: str
    pipeline: dict[str, Any]
    payload: Payload | StoredPayload
    priority: Priority
    metadata: dict[str, Any]
    id: uuid.UUID = field(default_factory=uuid.uuid4)
    created_at: datetime = field(default_factory=utcnow)
    state: JobState = JobState.QUEUED
    # The request's trace context: its start_job is published as a child of it.
    trace_context: Any = field(default_factory=tracing.current_context)
    rerun_of: uuid.UUID | None = None
    _blob_keys: list[str] = field(default_factory=list)
    # The job's own data key, wrapped, for its row (docs/adr/0015).
    _data_key: bytes | None = None
    _stored_bytes: int = 0
    _chunks: int = 0
    _chunk_records: int = 0
    _slices: int = 1

    @property
    def record_count(self) -> int:
        return self.payload.record_count

    @property
    def payload_prefix(self) -> str:
        return payload_prefix(self.tenant_id, self.id)


def payload_prefix(tenant_id: uuid.UUID, job_id: uuid.UUID) -> str:
    return job_blob_key(str(tenant_id), str(job_id), "payload") + "/"


@dataclass
class StoredPayload:
    """A payload already written as its chunk blobs (a file streamed in by
    :func:`store_lines`), for a job whose id was fixed before: the writer inserts its row
    and stores nothing more. ``discard`` deletes the blobs (a job refused after them)."""

    tenant_id: uuid.UUID
    job_id: uuid.UUID
    record_count: int
    size: int  # bytes of the payload as NDJSON, as ``Payload.size``
    chunks: int
    chunk_records: int  # records in every chunk but the last
    stored_bytes: int
    data_key: bytes | None
    blob_keys: list[str]

    def discard(self) -> None:
        keys, self.blob_keys = self.blob_keys, []
        _delete_keys(self.tenant_id, keys)


def store_lines(
    tenant_id: uuid.UUID, job_id: uuid.UUID, lines: Iterable[bytes], max_records: int
) -> StoredPayload:
    """Write ``lines`` (a payload's, as :func:`payload.file_lines` gives them) as the job's
    chunk blobs, each sealed under the job's new data key as soon as it is full, so that
    only one chunk is ever in memory. All or nothing: when ``lines`` raises (a bad line,
    however late in the file) or holds more than ``max_records``, the chunks written so far
    are deleted before the error goes on, and nothing refers to them (the job's row is
    inserted only later, by the writer)."""
    tenant = str(tenant_id)
    blobs = tenant_blobs()
    per_chunk = get_settings().jobs.chunk_records
    prefix = payload_prefix(tenant_id, job_id)
    job_key: NewJobKey | None = blobs.new_job_key(tenant, str(job_id))
    stored = StoredPayload(
        tenant_id=tenant_id,
        job_id=job_id,
        record_count=0,
        size=0,
        chunks=0,
        chunk_records=per_chunk,
        stored_bytes=0,
        data_key=job_key.wrapped if job_key is not None else None,
        blob_keys=[],
    )
    piece: list[bytes] = []

    def flush() -> None:
        key = chunk_key(prefix, stored.chunks)
        stored.blob_keys.append(key)  # before the put: a put that fails half-way is removed
        stored.stored_bytes += blobs.put(tenant, key, b"\n".join(piece) + b"\n", job_key=job_key)
        stored.chunks += 1
        piece.clear()

    try:
        for line in lines:
            stored.record_count += 1
            if stored.record_count > max_records:
                raise too_many_records(max_records)
            stored.size += len(line) + 1
            piece.append(line)
            if len(piece) == per_chunk:
                flush()
        if piece:
            flush()
        if not stored.record_count:
            raise no_records()
    except BaseException:
        stored.discard()
        raise
    return stored


def too_many_records(limit: int, count: int | None = None) -> PayloadTooLarge:
    has = f"{count} records" if count is not None else f"more than {limit} records"
    return PayloadTooLarge(
        f"the job has {has}; this tenant's limit is {limit} per job (split it into several jobs)",
        extra={"policy": "records-per-job", "limit": limit},
    )


@dataclass
class _Waiting:
    submission: Submission
    future: asyncio.Future[None]
    loop: asyncio.AbstractEventLoop

    def settle(self, error: BaseException | None = None) -> None:
        self.loop.call_soon_threadsafe(self._settle, error)

    def _settle(self, error: BaseException | None) -> None:
        if self.future.done():  # the request was cancelled (client gone); the job stands
            return
        if error is None:
            self.future.set_result(None)
        else:
            self.future.set_exception(error)


class IngestWriter:
    """The process's job writer: :meth:`submit` from the event loop, one thread writes."""

    def __init__(self, max_batch: int = MAX_BATCH) -> None:
        self.max_batch = max_batch
        self._queue: queue.SimpleQueue[_Waiting | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._closed = False

    async def submit(self, submission: Submission) -> Submission:
        """Store the job; returns once it is committed (and published), or raises."""
        self._start()
        loop = asyncio.get_running_loop()
        waiting = _Waiting(submission, loop.create_future(), loop)
        self._queue.put(waiting)
        await waiting.future
        return submission

    def close(self) -> None:
        """Write what is queued, then stop the thread."""
        with self._lock:
            self._closed = True
            thread = self._thread
        if thread is not None:
            self._queue.put(None)
            thread.join()

    def _start(self) -> None:
        if self._thread is not None:
            return
        with self._lock:
            if self._closed:
                raise ServiceUnavailable("the API is shutting down; retry on another instance")
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="celeriac-ingest-writer", daemon=True
                )
                self._thread.start()

    def _run(self) -> None:
        stopping = False
        while not stopping:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            while len(batch) < self.max_batch:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stopping = True
                    break
                batch.append(item)
            try:
                write_batch(batch)
            except BaseException as exc:  # never let the writer die with requests waiting
                logger.exception("the ingest writer failed a batch")
                for waiting in batch:
                    waiting.settle(_unavailable(exc))


def ingest_writer(app: Starlette) -> IngestWriter:
    """The app's writer (``create_app`` makes it and closes it at shutdown)."""
    writer = app.state.ingest_writer
    assert isinstance(writer, IngestWriter)
    return writer


def write_batch(batch: Sequence[_Waiting]) -> None:
    """Store, insert and publish ``batch``; settle every request with its own outcome."""
    stored: list[_Waiting] = []
    for waiting in batch:
        try:
            _store_payload(waiting.submission)
        except Exception as exc:
            _delete_blobs(waiting.submission)
            waiting.settle(_unavailable(exc))
        else:
            stored.append(waiting)
    if not stored:
        return
    committed = _insert_all_or_each(stored)
    publications = [_start_job(w.submission) for w in committed]
    carried = {
        str(p.message_id): w.submission.trace_context
        for p, w in zip(publications, committed, strict=True)
    }
    with tracing.publishing_in(carried):
        default_publisher().publish_or_leave(publications)
    for waiting in committed:
        metrics.job_submitted(waiting.submission.priority.value)
        waiting.settle()


def _insert_all_or_each(stored: list[_Waiting]) -> list[_Waiting]:
    try:
        _insert([w.submission for w in stored])
        return stored
    except Exception as exc:
        if len(stored) == 1:
            _delete_blobs(stored[0].submission)
            stored[0].settle(_unavailable(exc))
            return []
    committed = []
    for waiting in stored:
        try:
            _insert([waiting.submission])
        except Exception as exc:
            _delete_blobs(waiting.submission)
            waiting.settle(_unavailable(exc))
        else:
            committed.append(waiting)
    return committed


def _store_payload(submission: Submission) -> None:
    """The payload, encrypted, pre-cut into chunks so that fanning out is bookkeeping."""
    tenant = str(submission.tenant_id)
    blobs = tenant_blobs()
    jobs = get_settings().jobs
    # Fixed with the job, like its chunks, so that every planning of its analysis stage
    # (a redelivery, the reconciler, a worker with other settings) plans the same tasks.
    submission._slices = -(-submission.record_count // jobs.slice_records)
    if isinstance(submission.payload, StoredPayload):  # streamed in by the request
        stored = submission.payload
        assert stored.job_id == submission.id
        assert stored.tenant_id == submission.tenant_id
        submission._blob_keys = stored.blob_keys
        submission._data_key = stored.data_key
        submission._stored_bytes = stored.stored_bytes
        submission._chunks = stored.chunks
        submission._chunk_records = stored.chunk_records
        return
    pieces = chunks(submission.payload, jobs.chunk_records)
    # Every blob of the job is encrypted under a key of its own, wrapped on its row.
    job_key = blobs.new_job_key(tenant, str(submission.id))
    submission._data_key = job_key.wrapped if job_key is not None else None
    for index, piece in enumerate(pieces):
        key = chunk_key(submission.payload_prefix, index)
        submission._blob_keys.append(key)
        submission._stored_bytes += blobs.put(tenant, key, piece, job_key=job_key)
    submission._chunks = len(pieces)
    submission._chunk_records = jobs.chunk_records


def _delete_blobs(submission: Submission) -> None:
    if isinstance(submission.payload, StoredPayload):
        submission.payload.discard()
        return
    _delete_keys(submission.tenant_id, submission._blob_keys)


def _delete_keys(tenant_id: uuid.UUID, keys: Sequence[str]) -> None:
    blobs = tenant_blobs()
    for key in keys:
        try:
            blobs.delete(str(tenant_id), key)
        except Exception:
            logger.exception("could not delete blob %s of a rejected job", key)


def _insert(submissions: Sequence[Submission]) -> None:
    # Core INSERTs keyed by column name (a key that names no column would be dropped
    # silently, which the job API tests would notice).
    jobs = [_job_row(s) for s in submissions]
    usage = [_usage_row(s) for s in submissions]
    with get_engine().begin() as conn:
        repository.insert_jobs(conn, jobs)
        insert_usage(conn, usage)


def _job_row(s: Submission) -> dict[str, Any]:
    return {
        "id": s.id,
        "tenant_id": s.tenant_id,
        "priority": s.priority,
        "pipeline": s.pipeline,
        "state": s.state,
        "payload_key": s.payload_prefix,
        "record_count": s.record_count,
        "payload_bytes": s.payload.size,
        "metadata": s.metadata,
        # chunk_records: where each record is, for a slice that reads only its chunks'
        # datasets (workers/flow/compute.py).
        "checkpoints": {
            "payload": {"chunks": s._chunks, "chunk_records": s._chunk_records},
            "slices": s._slices,
        },
        "dispatch_count": 0,
        "rerun_of": s.rerun_of,
        "data_key": s._data_key,
        "created_at": s.created_at,
        "updated_at": s.created_at,
    }


def _usage_row(s: Submission) -> dict[str, Any]:
    return usage_row(
        cause=job_cause(s.id),
        tenant_id=s.tenant_id,
        metric=Metric.JOBS_SUBMITTED,
        quantity=1,
        occurred_at=s.created_at,
        source="api",
        properties={
            "job_id": str(s.id),
            "priority": s.priority.value,
            "pipeline": s.pipeline.get("name") or "custom",
            "records": s.record_count,
            "stored_bytes": s._stored_bytes,
        },
    )


def _start_job(s: Submission) -> Publication:
    ref = lifecycle.JobRef(str(s.tenant_id), str(s.id), s.tenant_slug, s.priority)
    message = lifecycle.stage_message(ref, JobState.QUEUED, None)
    assert message is not None
    # The id is chosen here so that the publish can be matched with its request's trace.
    return dataclasses.replace(message, message_id=message.message_id or str(uuid.uuid4()))


def _unavailable(exc: BaseException) -> BaseException:
    """What the client sees: its own problem, or a 503 for the platform's failures."""
    if isinstance(exc, ProblemError):
        return exc
    if isinstance(exc, DataError):  # alone in its batch, so it is this job's own value
        return ValidationFailed("a value in the job cannot be stored; nothing was kept")
    if isinstance(exc, DBAPIError | OSError):
        logger.error("a job could not be stored: %s", exc)
    else:
        logger.error("a job could not be stored", exc_info=exc)
    return ServiceUnavailable(
        "the job could not be stored; nothing was kept, retry shortly",
        headers={"Retry-After": "1"},
    )
