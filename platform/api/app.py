"""The FastAPI control plane. Publishes tasks by name; never imports worker code.

What a request passes, outermost first. Middleware (``create_app`` adds them innermost
first; Starlette puts the last one added outside):

1. OpenTelemetry's server span, when tracing is on (``install_observability``).
2. ``ConsoleSecurityHeaders``: CSP, framing and cache headers on console and docs pages.
3. ``HttpMetrics``: counts and times every answer, refusals included (when metrics are on).
4. ``RequestEnvelope``: ``X-Request-ID`` and the log context; 413 for a body over
   ``api.max_body_bytes`` and 415 for a media type the API does not take, before the body
   is read.
5. ``RateLimitHeaders``: writes ``RateLimit-Policy`` / ``RateLimit`` from what the
   admission counted; outside the recorder, so a replayed answer carries them too.
6. ``IdempotencyRecorder``: stores the 2xx answer of a request whose Idempotency-Key was
   reserved before sending it, and deletes the reservation on any other outcome.
7. ``StrictJsonBodies``: JSON bodies checked strictly (400 or 422) before FastAPI reads
   them; the job route parses its own.
8. FastAPI's exception handlers: every ``ProblemError`` as problem+json, and a replay
   (``IdempotentReplay``) as the stored answer.

Dependencies, in the order FastAPI solves them:

1. ``reject_unknown_query_parameters`` (the app's own): 422 for a misspelt filter.
2. The caller, from the route's alias (``platform/api/deps.py``). A tenant route's
   ``Admit``: ``Authenticator`` (the API key: 401; the route's scopes: 403), then the
   admission (``platform/api/admission.py``): the rate limit with, for a job submission, the
   monthly job reservation (429); the Idempotency-Key (a replay, or 409 / 422); the monthly
   refusal (429). So a 401 or 403 consumes nothing, and a replay counts as a request but
   not as a job. An admin route's ``AdminAdmit``: the JWT (401), the role (403), the
   Idempotency-Key.
3. The route's other parameters, ``SessionDep`` among them: it commits when the route
   function returns, before the answer is sent.
"""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from pydantic import BaseModel
from sqlalchemy import text

from celeriac.platform import tracing
from celeriac.platform.api.idempotency import install_idempotency
from celeriac.platform.api.middleware import RequestEnvelope
from celeriac.platform.api.observability import install_observability
from celeriac.platform.api.problems import PROBLEM_JSON, install_problem_handlers
from celeriac.platform.api.schemas import Problem
from celeriac.platform.api.strict_json import StrictJsonBodies
from celeriac.platform.auth.jwt import jwt_key_set
from celeriac.platform.broker import broker_connection
from celeriac.platform.console import install_console
from celeriac.platform.db import get_engine
from celeriac.platform.errors import ValidationFailed
from celeriac.platform.jobs.ingest import IngestWriter
from celeriac.platform.jobs.routes import BODY_MODELS as JOBS_BODY_MODELS
from celeriac.platform.jobs.routes import router as jobs_router
from celeriac.platform.keys.routes import admin_router as admin_keys_router
from celeriac.platform.keys.routes import tenant_router as keys_router
from celeriac.platform.ops.audit_routes import router as audit_router
from celeriac.platform.ops.routes import router as ops_router
from celeriac.platform.quotas.enforce import RateLimitHeaders
from celeriac.platform.quotas.routes import admin_router as admin_quotas_router
from celeriac.platform.quotas.routes import tenant_router as quotas_router
from celeriac.platform.settings import Settings, get_settings
from celeriac.platform.tenants.routes import router as tenants_router
from celeriac.platform.usage.routes import admin_router as admin_usage_router
from celeriac.platform.usage.routes import router as usage_router
from celeriac.platform.version import VERSION
from celeriac.platform.webhooks.routes import messages_router as webhook_messages_router
from celeriac.platform.webhooks.routes import router as webhooks_router

JOBS_PATH = "/v1/jobs"
CONSOLE_SUBMIT_PATH = "/console/submit"
REF_TEMPLATE = "#/components/schemas/{model}"


def _database_ready() -> str | None:
    try:
        with get_engine().connect() as conn:
            conn.execute(text("select 1"))
    except Exception as exc:  # any failure means "not ready"; the message says which
        return f"database: {type(exc).__name__}"
    return None


def _broker_ready(settings: Settings) -> str | None:
    try:
        with broker_connection(settings) as conn:
            conn.ensure_connection(max_retries=1, timeout=2)
    except Exception as exc:
        return f"broker: {type(exc).__name__}"
    return None


def _problem_openapi(app: FastAPI) -> dict[str, Any]:
    """OpenAPI where every 4xx/5xx answer is documented as application/problem+json."""
    if app.openapi_schema:
        return app.openapi_schema
    schema = get_openapi(
        title=app.title, version=app.version, description=app.description, routes=app.routes
    )
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    # Models that routes reference by $ref without declaring them as parameters (the job
    # body is read by hand, to take JSON or multipart).
    models: tuple[type[BaseModel], ...] = (Problem, *JOBS_BODY_MODELS)
    for model in models:
        components[model.__name__] = model.model_json_schema(ref_template=REF_TEMPLATE)
        for defs_name, definition in components[model.__name__].pop("$defs", {}).items():
            components.setdefault(defs_name, definition)
    problem = {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/Problem"}}}
    for path_item in schema.get("paths", {}).values():
        for method, operation in path_item.items():
            responses = operation.setdefault("responses", {})
            for code in _documented_errors(method, operation):
                responses.setdefault(code, {"description": "Error"})
            for code, response in responses.items():
                if code[0] in "45":
                    response["content"] = problem
    components.pop("HTTPValidationError", None)
    components.pop("ValidationError", None)
    app.openapi_schema = schema
    return schema


def _documented_errors(method: str, operation: dict[str, Any]) -> list[str]:
    """Answers any operation of its kind can give: bad input, auth, limits (a tenant's
    rate limit), and for writes the conflicts of state changes and of Idempotency-Key
    reuse."""
    codes = ["400", "422"]
    if operation.get("security"):
        codes += ["401", "403", "404"]
    if any("ApiKey" in requirement for requirement in operation.get("security", [])):
        codes.append("429")  # tenant requests are rate limited
    if method in {"post", "put", "patch", "delete"}:
        codes += ["409", "413", "415"]
    return codes


_QUERY_NAMES: dict[int, frozenset[str]] = {}


def _declared_query_names(route: APIRoute) -> frozenset[str]:
    cached = _QUERY_NAMES.get(id(route))
    if cached is not None:
        return cached
    names: set[str] = set()
    pending = [route.dependant]
    while pending:
        dependant = pending.pop()
        names |= {param.alias for param in dependant.query_params}
        pending.extend(dependant.dependencies)
    _QUERY_NAMES[id(route)] = frozenset(names)
    return _QUERY_NAMES[id(route)]


async def reject_unknown_query_parameters(request: Request) -> None:
    """A misspelt filter (``?stat=failed``) is an error, not a silently ignored no-op."""
    route = request.scope.get("route")
    if not isinstance(route, APIRoute):
        return
    unknown = sorted(set(request.query_params) - _declared_query_names(route))
    if unknown:
        raise ValidationFailed(
            f"unknown query parameter(s): {', '.join(repr(u) for u in unknown)}",
            errors=[
                {"pointer": f"#/query/{name}", "detail": "not a parameter of this route"}
                for name in unknown
            ],
        )


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    if settings.auth.jwt_hs256_secret is not None:
        jwt_key_set(settings)  # a bad key file fails at start, in one line, not per request
    writer = IngestWriter()

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        # What is loaded by now lives as long as the process: out of the collector's
        # reach, a full collection does not walk it (pauses of tens of ms in the p99).
        gc.freeze()
        yield
        await run_in_threadpool(writer.close)  # what is queued is written before exit

    app = FastAPI(
        lifespan=lifespan,
        title="Celeriac",
        version=VERSION,
        description=(
            "Multi-tenant data-processing workflows on Celery. Tenants authenticate with "
            "API keys (`Authorization: Bearer ck_live_...`); admins and billing with JWTs. "
            "Every error is `application/problem+json` (RFC 9457)."
        ),
        dependencies=[Depends(reject_unknown_query_parameters)],
        docs_url=None,  # served by the console from vendored files (platform/console/docs.py)
        telemetry=tracing.fastapi_telemetry(),
    )
    app.state.ingest_writer = writer
    install_problem_handlers(app)
    app.add_middleware(StrictJsonBodies, skip_paths={JOBS_PATH})  # the job route parses its own
    install_idempotency(app)  # inside the envelope: replays carry a fresh X-Request-ID
    app.add_middleware(RateLimitHeaders)  # outside the recorder: replays get them too
    app.add_middleware(
        RequestEnvelope,
        max_body_bytes=settings.api.max_body_bytes,
        multipart_paths={JOBS_PATH, CONSOLE_SUBMIT_PATH},
        form_prefix="/console/",
    )

    @app.get("/healthz", tags=["health"], summary="The process is up")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get(
        "/readyz",
        tags=["health"],
        summary="The database and the broker are reachable",
        responses={503: {"description": "A dependency is unreachable"}},
    )
    def readyz() -> JSONResponse:
        problems = [p for p in (_database_ready(), _broker_ready(settings)) if p]
        if problems:
            return JSONResponse({"status": "unavailable", "problems": problems}, status_code=503)
        return JSONResponse({"status": "ok"})

    for router in (
        tenants_router,
        admin_keys_router,
        admin_quotas_router,
        keys_router,
        quotas_router,
        jobs_router,
        webhook_messages_router,
        webhooks_router,
        usage_router,
        admin_usage_router,
        ops_router,
        audit_router,
    ):
        app.include_router(router)
    install_observability(app, settings)
    install_console(app)
    app.openapi = lambda: _problem_openapi(app)  # type: ignore[method-assign]
    return app
