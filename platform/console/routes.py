"""Console pages of a signed-in tenant, and signing in and out.

Every page calls the same service functions as the REST API, with the tenant context the
API's authenticator resolved from the session's key (``web.tenant_page``): another tenant's
job or target is the service's ``NotFound``, rendered as a 404 page.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Form, Header, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, Response
from fastapi.sse import EventSourceResponse, ServerSentEvent
from jose import jwt
from pydantic import ValidationError
from sqlalchemy import select
from starlette.datastructures import UploadFile

from celeriac.platform.api.admission import admit
from celeriac.platform.api.deps import (
    SessionDep,
    SettingsDep,
    api_key_authenticator,
    invalidate_auth,
)
from celeriac.platform.auth.jwt import InvalidToken, verify_token
from celeriac.platform.console import live, sessions, views
from celeriac.platform.console.web import (
    CSRF_FIELD,
    PREFIX,
    TenantDep,
    TenantPage,
    check_origin,
    cookie_name,
    redirect,
    render,
    set_session_cookie,
    sign_in_redirect,
    still_signed_in,
)
from celeriac.platform.db import get_sessionmaker
from celeriac.platform.errors import ProblemError, ValidationFailed
from celeriac.platform.jobs import data as job_data
from celeriac.platform.jobs import payload, pipelines, service
from celeriac.platform.jobs import waiting as job_waiting
from celeriac.platform.jobs.repository import JobRepository
from celeriac.platform.jobs.routes import accept_job, check_size
from celeriac.platform.jobs.schemas import JobOptions
from celeriac.platform.keys import service as keys
from celeriac.platform.keys.tokens import key_digest, parse_key
from celeriac.platform.models import (
    FINAL_JOB_STATES,
    Job,
    JobState,
    Priority,
    Tenant,
    WebhookDelivery,
    utcnow,
)
from celeriac.platform.quotas.enforce import limits_for
from celeriac.platform.quotas.service import quota_status
from celeriac.platform.usage import service as usage
from celeriac.platform.usage.schemas import Granularity
from celeriac.platform.webhooks import log as webhook_log
from celeriac.platform.webhooks import service as webhooks
from celeriac.platform.webhooks.repository import WebhookTargetRepository
from celeriac.platform.webhooks.routes import destination_resolver
from celeriac.platform.webhooks.service import EventTypeFilter

router = APIRouter(prefix=PREFIX, include_in_schema=False)
PAGE_SIZE = 25

_ENDED = {
    "ended": "Your session ended: the API key was revoked or expired, or the tenant was suspended.",
    "expired": "Your session expired. Sign in again.",
    "signed-out": "You have signed out.",
}


# --- signing in and out ------------------------------------------------------------------


@router.get("", response_class=HTMLResponse)
def home(request: Request) -> Response:
    state = sessions.resolve(request.cookies.get(cookie_name(request)))
    if state is None:
        return redirect(request, f"{PREFIX}/sign-in")
    if state.kind == "admin":
        target = "/admin/tenants" if state.role == "admin" else "/billing"
        return redirect(request, PREFIX + target)
    return redirect(request, f"{PREFIX}/jobs")


@router.get("/sign-in", response_class=HTMLResponse)
def sign_in_page(request: Request, ended: str | None = None) -> HTMLResponse:
    return render(request, "sign_in.html", {"notice": _ENDED.get(ended or "")})


@router.post("/sign-in", response_class=HTMLResponse)
def sign_in(
    request: Request, settings: SettingsDep, credential: Annotated[str, Form(max_length=4096)]
) -> Response:
    """Exchange an API key or an admin/billing token for a session. The credential comes
    in the POST body and is never stored: a tenant session keeps the key's digest."""
    check_origin(request)
    credential = credential.strip()
    try:
        if parse_key(credential) is not None:
            digest = key_digest(settings.api_key_pepper(), credential)
            ctx = api_key_authenticator().authenticate_digest(digest)
            session_id, _ = sessions.start(
                {
                    "kind": "tenant",
                    "key_digest": digest,
                    "key_id": str(ctx.key_id),
                    "tenant_id": str(ctx.tenant_id),
                    "tenant_slug": ctx.tenant_slug,
                }
            )
            target = f"{PREFIX}/jobs"
        else:
            principal = verify_token(settings, credential)
            claims = _unverified_exp(credential)
            session_id, _ = sessions.start(
                {"kind": "admin", "subject": principal.subject, "role": principal.role.value},
                not_after=claims,
            )
            target = (
                f"{PREFIX}/admin/tenants"
                if principal.role.value == "admin"
                else (f"{PREFIX}/billing")
            )
    except (ProblemError, InvalidToken) as exc:
        detail = exc.detail if isinstance(exc, ProblemError) else "the token is not valid"
        return render(
            request, "sign_in.html", {"error": f"Sign-in refused: {detail}."}, status_code=401
        )
    response = redirect(request, target)
    set_session_cookie(response, request, session_id)
    return response


def _unverified_exp(token: str) -> float | None:
    """The ``exp`` of a token that ``verify_token`` has just accepted (so it is present)."""
    exp = jwt.get_unverified_claims(token).get("exp")
    return float(exp) if isinstance(exp, int | float) else None


@router.post("/sign-out")
def sign_out(request: Request) -> Response:
    check_origin(request)
    sessions.end(request.cookies.get(cookie_name(request)))
    return sign_in_redirect(request, "signed-out")


# --- jobs ------------------------------------------------------------------------------


def _job_filters(state: str | None) -> JobState | None:
    if not state:
        return None
    try:
        return JobState(state)
    except ValueError:
        raise ValidationFailed(f"unknown state {state!r}") from None


def _jobs_context(
    page: TenantPage, session: SessionDep, state: str | None, cursor: str | None
) -> dict[str, Any]:
    rows, next_cursor = service.list_jobs(
        session,
        page.ctx,
        state=_job_filters(state),
        created_after=None,
        created_before=None,
        cursor=cursor or None,
        limit=PAGE_SIZE,
    )
    jobs = [service.job_summary(j) for j in rows]
    watch = live.watch_param(jobs)
    return {
        "jobs": jobs,
        "live_url": _live_url(watch, progress=False) if watch else None,
        "next_cursor": next_cursor,
        "state": state or "",
        "cursor": cursor or "",
        "states": [s.value for s in JobState],
        "human_ms": views.human_ms,
    }


def _live_url(watch: list[str], *, progress: bool) -> str:
    query = [("w", value) for value in watch] + ([("progress", "1")] if progress else [])
    return f"{PREFIX}/jobs/live-events?{urlencode(query)}"


@router.get("/jobs", response_class=HTMLResponse)
def jobs_page(
    request: Request,
    page: TenantDep,
    session: SessionDep,
    state: str | None = None,
    cursor: str | None = None,
) -> HTMLResponse:
    context = _jobs_context(page, session, state, cursor)
    return render(request, "jobs.html", {**context, "nav": "jobs"}, state=page.session)


@router.get("/jobs/rows", response_class=HTMLResponse)
def jobs_rows(
    request: Request,
    page: TenantDep,
    session: SessionDep,
    state: str | None = None,
    cursor: str | None = None,
) -> HTMLResponse:
    """The jobs table alone: what the page polls while any listed job runs."""
    context = _jobs_context(page, session, state, cursor)
    return render(request, "fragments/jobs_table.html", context, state=page.session)


def _live_spec(
    w: Annotated[list[str], Query()] = [],  # noqa: B006 (FastAPI copies the default)
    progress: bool = False,
) -> live.WatchSpec:
    """Checked before the stream's headers go out (afterwards an error can only end it)."""
    return live.parse_watch(w, progress)


@router.get("/jobs/live-events", response_class=EventSourceResponse)
async def live_events(
    page: TenantDep,
    settings: SettingsDep,
    spec: Annotated[live.WatchSpec, Depends(_live_spec)],
    last_event_id: Annotated[str | None, Header()] = None,
) -> AsyncIterator[ServerSentEvent]:
    """The job event stream for the console's pages (session cookie, not an API key):
    ``changed`` when a watched job moved past the cursor its page was rendered at, then
    ``end``. ``w`` is ``<job id>_<cursor>``; ``progress`` counts task ends as changes."""
    session_id = page.session_id
    async for event in live.stream(
        page.ctx,
        spec,
        spec.resume(last_event_id),
        interval=settings.console.poll_seconds,
        signed_in=lambda: still_signed_in(session_id),
    ):
        yield event


def _finished_view(session: SessionDep, page: TenantPage, job: Job) -> views.FinishedView:
    """What an ended job's page draws from its tasks and blobs: drawn once per API process
    (``views.cached_finished``)."""
    key = views.finished_key(job)
    drawn = views.cached_finished(key)
    if drawn is not None:
        return drawn
    results = None
    results_error = None
    if job.result_key:
        try:
            document = json.loads(service.job_results(session, page.ctx, job.id))
            results = views.results_view(document, views.first_records(page.ctx, job))
        except ProblemError as exc:
            results_error = exc.detail
    timeline = views.timeline(job, views.tasks_of(session, job.tenant_id, job.id))
    drawn = views.FinishedView(timeline, results, results_error)
    if results_error is None:  # a blob that could not be read is tried again
        views.keep_finished(key, drawn)
    return drawn


def _job_context(
    _request: Request, page: TenantPage, session: SessionDep, job_id: uuid.UUID
) -> dict[str, Any]:
    job = JobRepository(session, page.ctx).get(job_id)  # 404 for another tenant's job
    if job.state in FINAL_JOB_STATES:
        detail = service.job_detail(session, page.ctx, job_id)
        drawn = _finished_view(session, page, job)
    else:
        # A running job, drawn anew on each re-read: one read of its tasks gives the
        # timeline and, unless some were left out, the detail's progress and errors.
        tasks = views.tasks_of(session, job.tenant_id, job.id)
        detail = (
            views.detail_of(job, tasks)
            if len(tasks) <= views.MAX_BARS
            else service.job_detail(session, page.ctx, job_id)
        )
        drawn = views.FinishedView(views.timeline(job, tasks), None, None)
    # What GET /v1/jobs/{id} says while the job is queued (held by the running-job limit,
    # behind its own tasks, sharing the pool, or the tenant suspended).
    reason = job_waiting.waiting_reason(session, page.ctx, job)
    waiting = reason.model_dump() if reason else None
    return {
        "job": detail,
        "final": detail.state in FINAL_JOB_STATES,
        "live_url": None
        if detail.state in FINAL_JOB_STATES
        else _live_url(live.watch_param([detail]), progress=True),
        "waiting_reason": waiting,
        "timeline": drawn.timeline,
        "results": drawn.results,
        "results_error": drawn.results_error,
        "human_ms": views.human_ms,
        "nav": "jobs",
    }


@router.get("/jobs/{job_id}", response_class=HTMLResponse)
def job_page(
    request: Request, job_id: uuid.UUID, page: TenantDep, session: SessionDep
) -> HTMLResponse:
    context = _job_context(request, page, session, job_id)
    return render(request, "job.html", context, state=page.session)


@router.get("/jobs/{job_id}/live", response_class=HTMLResponse)
def job_live(
    request: Request, job_id: uuid.UUID, page: TenantDep, session: SessionDep
) -> HTMLResponse:
    """The job's state, timeline and (once it ends) results: what the page polls."""
    context = _job_context(request, page, session, job_id)
    return render(request, "fragments/job_live.html", context, state=page.session)


@router.post("/jobs/{job_id}/cancel")
def cancel_job(
    request: Request, job_id: uuid.UUID, page: TenantDep, session: SessionDep
) -> Response:
    page.ctx.require(keys.Scope.JOBS_WRITE)
    service.cancel_job(session, page.ctx, job_id)
    session.commit()
    return redirect(request, f"{PREFIX}/jobs/{job_id}")


async def _accept(
    request: Request,
    page: TenantPage,
    options: JobOptions,
    parsed: payload.Payload,
    rerun_of: uuid.UUID | None = None,
) -> uuid.UUID:
    """A job from the console goes through the API's checks: scope, rate limit and monthly
    quota (reserved here, given back if the submission fails), size limits, the registry."""
    page.ctx.require(keys.Scope.JOBS_WRITE)
    # A form sends no Idempotency-Key: only the rate limit and the monthly quota apply.
    admission = await admit(request, page.ctx, counts_job=True, idempotency=False)
    async with admission:
        submission = await accept_job(request, admission, options, parsed, rerun_of=rerun_of)
    return submission.id


@router.post("/jobs/{job_id}/rerun")
async def rerun_job(request: Request, job_id: uuid.UUID, page: TenantDep) -> Response:
    """Submit the job's stored records again with the same pipeline and priority, as
    ``POST /v1/jobs/{id}/rerun`` does: linked by ``rerun_of``, 410 once its data was
    deleted (``job_data.stored_payload``)."""

    def load() -> tuple[JobOptions, payload.Payload]:
        with get_sessionmaker()() as session:
            job = JobRepository(session, page.ctx).get(job_id)
            options = JobOptions.model_validate(
                {
                    "pipeline": views.rerun_spec(job),
                    "priority": job.priority.value,
                    "metadata": job.job_metadata or {},
                }
            )
            return options, job_data.stored_payload(page.ctx, job)

    options, parsed = await run_in_threadpool(load)
    new_id = await _accept(request, page, options, parsed, rerun_of=job_id)
    return redirect(request, f"{PREFIX}/jobs/{new_id}")


def _plugins() -> dict[str, list[Any]]:
    plugins = pipelines.cached_plugins() or pipelines.load_plugins()
    found: dict[str, list[Any]] = {"dataset": [], "analyzer": []}
    for (kind, _name), info in sorted(plugins.items()):
        found.setdefault(kind, []).append(info)
    return found


@router.get("/submit", response_class=HTMLResponse)
def submit_page(request: Request, page: TenantDep) -> HTMLResponse:
    return render(request, "submit.html", _submit_context(), state=page.session)


def _submit_context(**extra: Any) -> dict[str, Any]:
    return {
        "named": sorted(pipelines.NAMED_PIPELINES),
        "plugins": _plugins(),
        "priorities": [p.value for p in Priority],
        "nav": "submit",
        **extra,
    }


@router.post("/submit")
async def submit(request: Request, page: TenantDep) -> Response:
    """A CSV or NDJSON file with a named pipeline, or one built from the registered
    plugins (dataset and analyzer checkboxes), and a priority."""
    form = await request.form()
    upload = form.get("file")
    try:
        if not isinstance(upload, UploadFile) or not upload.filename:
            raise ValidationFailed("choose a CSV or NDJSON file to upload")
        spec: str | dict[str, Any]
        if form.get("mode") == "custom":
            datasets = [{"name": str(v)} for v in form.getlist("dataset")]
            analyzers = [{"name": str(v)} for v in form.getlist("analyzer")]
            if not datasets or not analyzers:
                raise ValidationFailed("choose at least one dataset and one analyzer")
            spec = {"datasets": datasets, "analyzers": analyzers}
        else:
            spec = str(form.get("pipeline") or "")
        try:
            options = JobOptions.model_validate(
                {"pipeline": spec, "priority": str(form.get("priority") or "normal")}
            )
        except ValidationError as exc:
            raise ValidationFailed(f"the job is not valid: {exc.errors()[0]['msg']}") from None
        limits = await _limits(page)
        check_size(limits, upload.size)
        fmt = payload.file_format(upload.content_type, upload.filename)
        parsed = payload.from_file(await upload.read(), fmt)
        job_id = await _accept(request, page, options, parsed)
    except ProblemError as exc:
        context = _submit_context(error=exc.detail)
        return render(request, "submit.html", context, status_code=exc.status, state=page.session)
    return redirect(request, f"{PREFIX}/jobs/{job_id}")


async def _limits(page: TenantPage) -> Any:
    return await limits_for(page.ctx.tenant_id)


# --- webhooks --------------------------------------------------------------------------


def _webhooks_context(session: SessionDep, page: TenantPage, **extra: Any) -> dict[str, Any]:
    page.ctx.require(keys.Scope.WEBHOOKS_MANAGE)
    rows, _ = WebhookTargetRepository(session, page.ctx).page(cursor=None, limit=100)
    return {
        "targets": rows,
        "event_types": [e.value for e in EventTypeFilter],
        "nav": "webhooks",
        **extra,
    }


@router.get("/webhooks", response_class=HTMLResponse)
def webhooks_page(request: Request, page: TenantDep, session: SessionDep) -> HTMLResponse:
    return render(request, "webhooks.html", _webhooks_context(session, page), state=page.session)


@router.post("/webhooks", response_class=HTMLResponse)
def create_target(
    request: Request,
    page: TenantDep,
    session: SessionDep,
    settings: SettingsDep,
    url: Annotated[str, Form(max_length=2000)],
    description: Annotated[str, Form(max_length=500)] = "",
    event_types: Annotated[list[str] | None, Form()] = None,
) -> HTMLResponse:
    page.ctx.require(keys.Scope.WEBHOOKS_MANAGE)
    try:
        issued = webhooks.create_target(
            session,
            page.ctx,
            url=url,
            event_types=event_types or ["*"],
            description=description,
            settings=settings.webhooks,
            resolve=destination_resolver(),
        )
        session.commit()
    except ProblemError as exc:
        session.rollback()
        context = _webhooks_context(session, page, error=exc.detail)
        return render(request, "webhooks.html", context, status_code=exc.status, state=page.session)
    context = _webhooks_context(session, page, secret=issued.secret, secret_for=issued.target)
    return render(request, "webhooks.html", context, status_code=201, state=page.session)


@router.post("/webhooks/{target_id}/{action}", response_class=HTMLResponse)
def target_action(
    request: Request,
    target_id: uuid.UUID,
    action: str,
    page: TenantDep,
    session: SessionDep,
    since: Annotated[str | None, Form()] = None,
) -> Response:
    """enable, disable, rotate (the new secret is shown once), test, recover."""
    page.ctx.require(keys.Scope.WEBHOOKS_MANAGE)
    if action == "enable":
        webhooks.enable_target(session, page.ctx, target_id)
    elif action == "disable":
        webhooks.disable_target(session, page.ctx, target_id)
    elif action == "delete":
        webhooks.delete_target(session, page.ctx, target_id)
        session.commit()
        return redirect(request, f"{PREFIX}/webhooks")
    elif action == "rotate":
        issued = webhooks.rotate_secret(
            session, page.ctx, target_id, previous_secret_grace=timedelta(hours=24)
        )
        session.commit()
        context = _webhooks_context(session, page, secret=issued.secret, secret_for=issued.target)
        return render(request, "webhooks.html", context, state=page.session)
    elif action == "test":
        webhook_log.send_test(session, page.ctx, target_id)
    elif action == "recover":
        webhook_log.recover(session, page.ctx, target_id, recover_since(since))
    else:
        raise ValidationFailed(f"unknown action {action!r}")
    session.commit()
    return redirect(request, f"{PREFIX}/webhooks/{target_id}")


def recover_since(since: str | None) -> datetime:
    """The recover form's ``since`` (a datetime-local value, UTC)."""
    try:
        value = datetime.fromisoformat(since or "")
    except ValueError:
        raise ValidationFailed("give the time to recover failed deliveries since") from None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


@router.get("/webhooks/{target_id}", response_class=HTMLResponse)
def target_page(
    request: Request, target_id: uuid.UUID, page: TenantDep, session: SessionDep
) -> HTMLResponse:
    """A target and its attempts log (status, answer excerpt); its recent messages can be
    sent again."""
    page.ctx.require(keys.Scope.WEBHOOKS_MANAGE)
    target = WebhookTargetRepository(session, page.ctx).get(target_id)
    attempts, _ = webhook_log.attempts_page(
        session,
        page.ctx,
        target_id,
        status_code=None,
        succeeded=None,
        trigger=None,
        since=None,
        until=None,
        cursor=None,
        limit=50,
    )
    delivery_ids = {a.delivery_id for a in attempts}
    messages = (
        dict(
            session.execute(
                select(WebhookDelivery.id, WebhookDelivery.message_id).where(
                    WebhookDelivery.tenant_id == page.ctx.tenant_id,
                    WebhookDelivery.id.in_(delivery_ids),
                )
            )
            .tuples()
            .all()
        )
        if delivery_ids
        else {}
    )
    return render(
        request,
        "target.html",
        {"target": target, "attempts": attempts, "messages": messages, "nav": "webhooks"},
        state=page.session,
    )


@router.post("/webhook-messages/{message_id}/resend")
def resend_message(
    request: Request,
    message_id: str,
    page: TenantDep,
    session: SessionDep,
    target_id: Annotated[uuid.UUID | None, Form()] = None,
) -> Response:
    page.ctx.require(keys.Scope.WEBHOOKS_MANAGE)
    webhook_log.resend(session, page.ctx, message_id, target_id)
    session.commit()
    back = f"{PREFIX}/webhooks/{target_id}" if target_id else f"{PREFIX}/webhooks"
    return redirect(request, back)


# --- API keys --------------------------------------------------------------------------


def _keys_context(session: SessionDep, page: TenantPage, **extra: Any) -> dict[str, Any]:
    page.ctx.require(keys.Scope.KEYS_MANAGE)
    rows, _ = keys.ApiKeyRepository(session, page.ctx).page(cursor=None, limit=100)
    # Only what the session's key holds: a key cannot grant a scope it lacks.
    return {
        "keys": rows,
        "scopes": sorted(page.ctx.scopes),
        "nav": "keys",
        "own_key": page.ctx.key_id,
        "now": utcnow(),
        **extra,
    }


@router.get("/keys", response_class=HTMLResponse)
def keys_page(request: Request, page: TenantDep, session: SessionDep) -> HTMLResponse:
    return render(request, "keys.html", _keys_context(session, page), state=page.session)


@router.post("/keys", response_class=HTMLResponse)
def create_key(
    request: Request,
    page: TenantDep,
    session: SessionDep,
    settings: SettingsDep,
    name: Annotated[str, Form(max_length=100)] = "",
    scopes: Annotated[list[str] | None, Form()] = None,
) -> HTMLResponse:
    page.ctx.require(keys.Scope.KEYS_MANAGE)
    try:
        issued = keys.create_api_key(
            session,
            tenant_id=page.ctx.tenant_id,
            pepper=settings.api_key_pepper(),
            scopes=scopes or sorted(page.ctx.scopes),
            name=name,
            created_by=page.ctx.principal,
            granted_by=page.ctx.scopes,
        )
        session.commit()
    except ProblemError as exc:
        session.rollback()
        return render(
            request,
            "keys.html",
            _keys_context(session, page, error=exc.detail),
            status_code=exc.status,
            state=page.session,
        )
    context = _keys_context(session, page, plaintext=issued.plaintext, issued=issued.api_key)
    return render(request, "keys.html", context, status_code=201, state=page.session)


@router.post("/keys/{key_id}/{action}", response_class=HTMLResponse)
def key_action(
    request: Request,
    key_id: uuid.UUID,
    action: str,
    page: TenantDep,
    session: SessionDep,
    settings: SettingsDep,
) -> Response:
    """revoke (at once), or roll (a new key, shown once; the old one works for a day)."""
    page.ctx.require(keys.Scope.KEYS_MANAGE)
    if action == "revoke":
        keys.revoke_api_key(session, page.ctx, key_id, invalidate=invalidate_auth)
        session.commit()
        return redirect(request, f"{PREFIX}/keys")
    if action == "roll":
        issued = keys.roll_api_key(
            session,
            page.ctx,
            key_id,
            pepper=settings.api_key_pepper(),
            old_key_grace=timedelta(hours=24),
            created_by=page.ctx.principal,
            invalidate=invalidate_auth,
        )
        session.commit()
        context = _keys_context(session, page, plaintext=issued.plaintext, issued=issued.api_key)
        return render(request, "keys.html", context, status_code=201, state=page.session)
    raise ValidationFailed(f"unknown action {action!r}")


# --- usage -----------------------------------------------------------------------------


@router.get("/usage", response_class=HTMLResponse)
def usage_page(request: Request, page: TenantDep, session: SessionDep) -> HTMLResponse:
    """Current use against each limit, and a chart per metric over the last 30 days."""
    tenant = session.get(Tenant, page.ctx.tenant_id)
    assert tenant is not None
    status = quota_status(session, tenant)
    totals = usage.summarize(
        session,
        granularity=Granularity.DAY,
        tenant_id=page.ctx.tenant_id,
        metric=None,
        occurred_after=utcnow() - timedelta(days=30),
        occurred_before=None,
    )
    # Every day of the window, zero where nothing was recorded: the chart's axis is the
    # 30 days, whatever the number of days with usage.
    today = utcnow().replace(hour=0, minute=0, second=0, microsecond=0)
    days = [int((today - timedelta(days=back)).timestamp()) for back in range(29, -1, -1)]
    series: dict[str, dict[str, Any]] = {}
    for total in totals:
        entry = series.setdefault(total.metric, {"unit": total.unit, "by_day": {}})
        day = int(total.period_start.timestamp())
        entry["by_day"][day] = entry["by_day"].get(day, 0.0) + float(total.quantity)
    charts = []
    for metric, entry in sorted(series.items()):
        values = [entry["by_day"].get(day, 0.0) for day in days]
        charts.append(
            {
                "id": f"usage-{metric.replace('.', '-')}",
                "metric": metric,
                "unit": entry["unit"],
                "data": json.dumps([days, values]),
                "total": sum(entry["by_day"].values()),
            }
        )
    meters = []
    for name in ("running_jobs", "jobs_this_month", "webhook_targets"):
        meter = getattr(status.usage, name)
        percent = min(100, round(100 * meter.used / meter.limit)) if meter.limit else 0
        meters.append(
            {
                "name": name.replace("_", " "),
                "used": meter.used,
                "limit": meter.limit,
                "percent": percent,
            }
        )
    limits = status.limits.model_dump()
    return render(
        request,
        "usage.html",
        {"meters": meters, "charts": charts, "limits": limits, "plan": status.plan, "nav": "usage"},
        state=page.session,
    )


__all__ = ["CSRF_FIELD", "router"]
