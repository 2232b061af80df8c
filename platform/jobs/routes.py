"""Tenant job routes: submit (JSON or multipart file), list, get, results, cancel,
re-run, delete, live events."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Depends, Header, Query, Request, Response, status
from fastapi.concurrency import run_in_threadpool
from fastapi.sse import EventSourceResponse, ServerSentEvent
from pydantic import BaseModel, ValidationError

from celeriac.platform import json_input
from celeriac.platform.api import idempotency
from celeriac.platform.api.admission import Admission
from celeriac.platform.api.deps import Admit, SessionDep
from celeriac.platform.api.schemas import Page, Timestamp
from celeriac.platform.auth.context import TenantContext
from celeriac.platform.db import get_sessionmaker, run_after_commit
from celeriac.platform.errors import (
    NotFound,
    PayloadTooLarge,
    ProblemError,
    ServiceUnavailable,
    ValidationFailed,
)
from celeriac.platform.jobs import data as job_data
from celeriac.platform.jobs import events as job_events_module
from celeriac.platform.jobs import payload, pipelines, repository, service, task_errors
from celeriac.platform.jobs import waiting as job_waiting
from celeriac.platform.jobs.ingest import (
    StoredPayload,
    Submission,
    ingest_writer,
    store_lines,
    too_many_records,
)
from celeriac.platform.jobs.repository import JobRepository
from celeriac.platform.jobs.schemas import JobAccepted, JobCreate, JobOptions, JobOut, JobRerun
from celeriac.platform.keys.service import Scope
from celeriac.platform.models import Job, JobState
from celeriac.platform.quotas.plans import Limits

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])
T = TypeVar("T", bound=BaseModel)

# Every route is admitted (rate limit, Idempotency-Key); a submission also reserves its job
# against the tenant's monthly quota, and holds the Admission to give it back on failure.
JobSubmission = Annotated[Admission, Depends(Admit(Scope.JOBS_WRITE, counts_job=True))]
JobWriter = Annotated[TenantContext, Depends(Admit(Scope.JOBS_WRITE).tenant)]
JobReader = Annotated[TenantContext, Depends(Admit(Scope.JOBS_READ).tenant)]

# Referenced below by $ref; the app puts their schemas in the document's components.
BODY_MODELS: tuple[type[BaseModel], ...] = (JobCreate,)
_MULTIPART_DOC = {
    "requestBody": {
        "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/JobCreate"}},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["pipeline", "file"],
                    "properties": {
                        "pipeline": {
                            "type": "string",
                            "description": "A pipeline name or its JSON spec.",
                        },
                        "priority": {"type": "string", "enum": ["high", "normal", "low"]},
                        "metadata": {"type": "string", "description": "A JSON object."},
                        "file": {
                            "type": "string",
                            "format": "binary",
                            "description": "CSV (with a header row) or NDJSON.",
                        },
                    },
                }
            },
        },
        "required": True,
    }
}


def _accepted(job: Submission, response: Response) -> JobAccepted:
    location = f"/v1/jobs/{job.id}"
    response.headers["Location"] = location
    return JobAccepted(
        id=job.id,
        state=job.state,
        priority=job.priority,
        record_count=job.record_count,
        created_at=job.created_at,
        status_url=location,
        results_url=f"{location}/results",
    )


async def _multipart_job(
    request: Request, admission: Admission, job_id: uuid.UUID
) -> tuple[JobOptions, StoredPayload]:
    """The form's options, then its file streamed into the job's chunk blobs (never
    whole in memory: a 1,000,000-record file is 431 MB). A bad line anywhere in the file
    is a 422 that leaves no blob behind; the job's row is written only after."""
    limits = admission.limits
    form = await request.form()
    upload = form.get("file")
    if upload is None or isinstance(upload, str):
        raise ValidationFailed(
            "send the records as a file part named 'file'",
            errors=[{"pointer": "#/body/file", "detail": "missing"}],
        )
    check_size(limits, upload.size)
    fields: dict[str, Any] = {}
    for name in ("pipeline", "priority", "metadata"):
        value = form.get(name)
        if value is None:
            continue
        if not isinstance(value, str):
            raise ValidationFailed(f"form field {name!r} must be text")
        fields[name] = _form_json(name, value) if _is_json_field(name, value) else value
    options = _validated(JobOptions, fields)
    fmt = payload.file_format(upload.content_type, upload.filename)
    # The spooled upload (memory up to 1 MiB, then a temporary file) is read in blocks on
    # a thread: the check of a big file's lines would stall the event loop for seconds.
    file = upload.file

    def store() -> StoredPayload:
        file.seek(0)
        lines = payload.file_lines(file, fmt)
        return store_lines(admission.ctx.tenant_id, job_id, lines, limits.max_records_per_job)

    return options, await run_in_threadpool(store)


def _is_json_field(name: str, value: str) -> bool:
    return name == "metadata" or (name == "pipeline" and value.lstrip().startswith("{"))


def _form_json(name: str, value: str) -> Any:
    try:
        return json_input.parse(value, what=f"form field {name!r}")
    except ProblemError as exc:
        raise ValidationFailed(
            exc.detail, errors=[{"pointer": f"#/body/{name}", "detail": exc.detail}]
        ) from None


def _validated(model: type[T], fields: Any) -> T:
    try:
        return model.model_validate(fields)
    except ValidationError as exc:
        errors = [
            {"pointer": "#/body" + "".join(f"/{p}" for p in e["loc"]), "detail": e["msg"]}
            for e in exc.errors()
        ]
        raise ValidationFailed(
            f"the job is not valid: {errors[0]['pointer']}: {errors[0]['detail']}", errors=errors
        ) from None


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=JobAccepted,
    openapi_extra=_MULTIPART_DOC,
    summary="Submit a job",
)
async def submit_job(request: Request, admission: JobSubmission, response: Response) -> JobAccepted:
    """Accept records inline (`application/json`) or as a CSV / NDJSON file
    (`multipart/form-data`) with a pipeline and a priority. Answers 202 with the job's id
    once the job is stored; it runs on the tenant's queues."""
    # Everything up to the writer runs on the event loop: with the key, the tenant's limits
    # and the plugin registry cached, a submission touches no thread pool and no database
    # before the writer (platform/jobs/ingest.py). Its monthly reservation was made with
    # the rate limit; a submission that fails gives it back.
    async with admission:
        return await _submit(request, admission, response)


async def _submit(request: Request, admission: Admission, response: Response) -> JobAccepted:
    limits = admission.limits
    check_size(limits, request.headers.get("content-length"))
    options: JobOptions
    if request.headers.get("content-type", "").startswith("multipart/form-data"):
        # Under an Idempotency-Key the job takes the reservation's id (accept_job): its
        # blobs are written under it before the job is handed to the writer.
        job_id = admission.idempotency_key_id or uuid.uuid4()
        options, stored = await _multipart_job(request, admission, job_id)
        try:
            submission = await _submission(admission, options, stored)
        except Exception:
            await run_in_threadpool(stored.discard)  # refused: its blobs go with it
            raise
        # From here the writer owns the blobs: it deletes them if it cannot store the job.
        return _accepted(await ingest_writer(request.app).submit(submission), response)
    else:
        body = await request.body()
        check_size(limits, len(body))
        job = _validated(JobCreate, json_input.parse(body))
        options, parsed = job, payload.from_records(job.records)
    return _accepted(await accept_job(request, admission, options, parsed), response)


async def accept_job(
    request: Request,
    admission: Admission,
    options: JobOptions,
    parsed: payload.Payload | StoredPayload,
    *,
    rerun_of: uuid.UUID | None = None,
) -> Submission:
    """Resolve the pipeline and hand the job to the ingest writer (the REST API and the
    console both end here, after their own parsing and the tenant's admission)."""
    submission = await _submission(admission, options, parsed, rerun_of=rerun_of)
    return await ingest_writer(request.app).submit(submission)


async def _submission(
    admission: Admission,
    options: JobOptions,
    parsed: payload.Payload | StoredPayload,
    *,
    rerun_of: uuid.UUID | None = None,
) -> Submission:
    """The job, checked against the tenant's limits and the registry, for the writer."""
    ctx, limits = admission.ctx, admission.limits
    if parsed.record_count > limits.max_records_per_job:
        raise too_many_records(limits.max_records_per_job, parsed.record_count)
    plugins = pipelines.cached_plugins()
    if plugins is None:
        plugins = await run_in_threadpool(pipelines.load_plugins)
    if not plugins:
        # No compute worker has ever published its plugins (the platform is starting):
        # the job is fine, the platform is not ready for it yet.
        raise ServiceUnavailable(
            "no compute worker has published its plugins yet (the platform is starting); "
            "retry shortly",
            headers={"Retry-After": "5"},
        )
    submission = Submission(
        tenant_id=ctx.tenant_id,
        tenant_slug=ctx.tenant_slug,
        pipeline=pipelines.resolve_against(plugins, options.pipeline_spec()),
        payload=parsed,
        priority=options.priority,
        metadata=options.metadata,
        rerun_of=rerun_of,
    )
    # Under an Idempotency-Key the job takes the reservation's id: if this process dies
    # before the answer is stored, a retry finds the job (_recover_submission). A streamed
    # file's blobs were written under the id already.
    if isinstance(parsed, StoredPayload):
        submission.id = parsed.job_id
    else:
        submission.id = admission.idempotency_key_id or submission.id
    return submission


def _recover_submission(
    tenant_id: uuid.UUID | None, reservation: uuid.UUID
) -> tuple[int, dict[str, str], bytes] | None:
    """The 202 of a submission whose API died after storing the job, rebuilt from the job
    (stored under the reservation's id), or None when the job was never stored."""
    if tenant_id is None:
        return None
    with get_sessionmaker()() as session:
        job = repository.load_job(session, tenant_id, reservation)
    if job is None:
        return None
    location = f"/v1/jobs/{job.id}"
    accepted = JobAccepted(
        id=job.id,
        state=JobState.QUEUED,
        priority=job.priority,
        record_count=job.record_count,
        created_at=job.created_at,
        status_url=location,
        results_url=f"{location}/results",
    )
    headers = {"content-type": "application/json", "location": location}
    return status.HTTP_202_ACCEPTED, headers, accepted.model_dump_json().encode()


idempotency.recover_abandoned(router.prefix, _recover_submission)


def check_size(limits: Limits, size: int | str | None) -> None:
    """413 for a body over the tenant's ``max_payload_bytes`` (a Content-Length is checked
    before the body is read)."""
    try:
        length = int(size) if size is not None else 0
    except ValueError:
        return  # the request envelope answers a malformed Content-Length
    if length > limits.max_payload_bytes:
        raise PayloadTooLarge(
            f"the job is {length} bytes; this tenant's limit is {limits.max_payload_bytes} "
            "bytes per job (split it into several jobs)",
            extra={"policy": "payload-bytes", "limit": limits.max_payload_bytes},
        )


@router.get("", response_model=Page[JobOut])
def list_jobs(
    ctx: JobReader,
    session: SessionDep,
    state: JobState | None = None,
    created_after: Timestamp | None = None,
    created_before: Timestamp | None = None,
    cursor: str | None = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 50,
) -> Page[JobOut]:
    """The tenant's jobs, newest first; filter by state and creation time."""
    rows, next_cursor = service.list_jobs(
        session,
        ctx,
        state=state,
        created_after=created_after,
        created_before=created_before,
        cursor=cursor,
        limit=limit,
    )
    retention = job_data.retention_days(session, ctx)
    return Page(
        data=[job_data.with_data_fields(j, service.job_summary(j), retention) for j in rows],
        next_cursor=next_cursor,
    )


@router.get("/{job_id}", response_model=JobOut)
def get_job(job_id: uuid.UUID, ctx: JobReader, session: SessionDep) -> JobOut:
    """State, per-stage progress, timings and the errors of failed tasks (their details,
    stored encrypted under the tenant's key, are shown here to the tenant only);
    `expires_at` once it has ended, `waiting_reason` while it is queued."""
    out = service.job_detail(session, ctx, job_id)
    task_errors.reveal(session, ctx.tenant_id, job_id, out.errors)
    job = JobRepository(session, ctx).get(job_id)
    out = job_data.with_data_fields(job, out, job_data.retention_days(session, ctx))
    out.waiting_reason = job_waiting.waiting_reason(session, ctx, job)
    return out


@router.get(
    "/{job_id}/results",
    responses={
        200: {
            "content": {"application/json": {"schema": {"type": "object"}}},
            "description": "The result document",
        }
    },
)
def get_results(job_id: uuid.UUID, ctx: JobReader, session: SessionDep) -> Response:
    """The result document of a finished job (409 while it runs)."""
    return Response(service.job_results(session, ctx, job_id), media_type="application/json")


@router.post("/{job_id}/cancel", response_model=JobOut)
def cancel_job(job_id: uuid.UUID, ctx: JobWriter, session: SessionDep) -> JobOut:
    """Cancel a queued or running job: its pending tasks are revoked (409 if it ended)."""
    job = service.cancel_job(session, ctx, job_id)
    run_after_commit(session, lambda: job_events_module.announce(job_id))  # open streams end
    return service.job_summary(job)


@router.post(
    "/{job_id}/rerun",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=JobAccepted,
    summary="Re-run a job on its stored records",
)
async def rerun_job(
    job_id: uuid.UUID, request: Request, admission: JobSubmission, response: Response
) -> JobAccepted:
    """A new job (linked by `rerun_of`) on the records stored with `job_id`, with the same
    pipeline and priority unless the body names others. Quotas and usage count it as a new
    job; 410 once the original's data was deleted."""
    ctx = admission.ctx
    async with admission:
        body = await request.body()
        fields = json_input.parse(body) if body.strip() else {}
        changes = _validated(JobRerun, fields)
        original, parsed = await run_in_threadpool(_rerun_source, ctx, job_id)
        plugins = pipelines.cached_plugins()
        if plugins is None:
            plugins = await run_in_threadpool(pipelines.load_plugins)
        spec = (
            _spec_of(original)
            if changes.pipeline is None
            else (
                changes.pipeline
                if isinstance(changes.pipeline, str)
                else changes.pipeline.model_dump()
            )
        )
        limits = admission.limits
        if parsed.record_count > limits.max_records_per_job:
            raise PayloadTooLarge(
                f"the job has {parsed.record_count} records; this tenant's limit is "
                f"{limits.max_records_per_job} per job",
                extra={"policy": "records-per-job", "limit": limits.max_records_per_job},
            )
        submission = Submission(
            tenant_id=ctx.tenant_id,
            tenant_slug=ctx.tenant_slug,
            pipeline=pipelines.resolve_against(plugins, spec),
            payload=parsed,
            priority=changes.priority or original.priority,
            metadata=original.job_metadata if changes.metadata is None else changes.metadata,
            rerun_of=original.id,
        )
        return _accepted(await ingest_writer(request.app).submit(submission), response)


def _rerun_source(ctx: TenantContext, job_id: uuid.UUID) -> tuple[Job, payload.Payload]:
    with get_sessionmaker()() as session:
        job = JobRepository(session, ctx).get(job_id)
        return job, job_data.stored_payload(ctx, job)


def _spec_of(job: Job) -> str | dict[str, Any]:
    """The pipeline a job was submitted with, to be resolved again (plugins may be newer)."""
    if job.pipeline.get("name"):
        return str(job.pipeline["name"])
    return {
        section: [
            {"name": s["name"], "params": s.get("params") or {}}
            for s in job.pipeline.get(section, [])
        ]
        for section in ("datasets", "analyzers")
    }


@router.delete("/{job_id}", status_code=status.HTTP_204_NO_CONTENT, summary="Delete a job's data")
def delete_job(job_id: uuid.UUID, ctx: JobWriter, session: SessionDep) -> Response:
    """Delete a finished job's records, intermediate data and results (409 while it is
    queued or running). The job stays listed, with `data_deleted_at`; its usage records
    stay. Deleting twice is not an error."""
    job_data.delete_job_data(session, ctx, job_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


async def _stream_start(
    job_id: uuid.UUID,
    ctx: JobReader,
    last_event_id: Annotated[
        str | None,
        Header(description="The id of the last event received: the stream resumes after it."),
    ] = None,
) -> job_events_module.Cursor:
    """Checks made before the stream's headers go out: afterwards an error can only end the
    stream, not answer 400 or 404."""
    cursor = job_events_module.Cursor.parse(last_event_id)
    if await run_in_threadpool(_snapshot, ctx.tenant_id, job_id) is None:
        raise NotFound(f"no job {job_id}")
    return cursor


@router.get(
    "/{job_id}/events",
    response_class=EventSourceResponse,
    summary="The job's live events (Server-Sent Events)",
    responses={400: {"description": "A malformed `Last-Event-ID`"}},
)
async def job_events(
    job_id: uuid.UUID,
    ctx: JobReader,
    cursor: Annotated[job_events_module.Cursor, Depends(_stream_start)],
) -> AsyncIterator[ServerSentEvent]:
    """`text/event-stream`: `state` events (`queued`, `running`, the final state) and one
    `progress` event per task that ends in a stage (`stage`, `done`, `total`, `failed`);
    the stream ends after the final state (at once, for a finished job). Event ids are
    cursors: reconnecting with `Last-Event-ID` sends what follows it, without loss or
    repeats. Comments (`: ping`) keep idle connections open."""
    async for event in _event_stream(ctx, job_id, cursor):
        yield event


async def _event_stream(
    ctx: TenantContext, job_id: uuid.UUID, cursor: job_events_module.Cursor
) -> AsyncIterator[ServerSentEvent]:
    async with job_events_module.job_watch().watch(ctx.tenant_id, job_id) as watcher:
        while True:
            await watcher.changed.wait()
            watcher.changed.clear()
            snapshot = watcher.snapshot
            if snapshot is None:
                return  # deleted with its tenant meanwhile
            cursor, events = job_events_module.events_between(cursor, snapshot)
            for event in events:
                yield ServerSentEvent(data=event, event=event["type"], id=event["id"])
            if cursor.rank == 2:
                return


def _snapshot(tenant_id: uuid.UUID, job_id: uuid.UUID) -> job_events_module.Snapshot | None:
    with get_sessionmaker()() as session:
        return job_events_module.read_snapshot(session, tenant_id, job_id)
