"""Every non-2xx answer is ``application/problem+json`` (RFC 9457)."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import kombu.exceptions
import redis.exceptions
import sqlalchemy.exc
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DataError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from celeriac.platform.errors import ProblemError
from celeriac.platform.logging import current_context
from celeriac.platform.metrics import quota_rejected

PROBLEM_JSON = "application/problem+json"
TYPE_BASE = "https://celeriac.dev/problems/"

logger = logging.getLogger(__name__)

_STATUS_CODES = {
    400: ("bad-request", "Bad request"),
    401: ("unauthorized", "Unauthorized"),
    403: ("forbidden", "Forbidden"),
    404: ("not-found", "Not found"),
    405: ("method-not-allowed", "Method not allowed"),
    406: ("not-acceptable", "Not acceptable"),
    409: ("conflict", "Conflict"),
    413: ("payload-too-large", "Payload too large"),
    415: ("unsupported-media-type", "Unsupported media type"),
    422: ("validation-failed", "Validation failed"),
    429: ("quota-exceeded", "Quota exceeded"),
    500: ("internal-error", "Internal server error"),
    503: ("service-unavailable", "Service unavailable"),
}


def problem_response(
    request: Request,
    *,
    status: int,
    code: str,
    title: str,
    detail: str,
    errors: Sequence[Mapping[str, Any]] = (),
    headers: Mapping[str, str] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> JSONResponse:
    body: dict[str, Any] = {
        "type": TYPE_BASE + code,
        "title": title,
        "status": status,
        "detail": detail,
        "instance": request.url.path,
        "code": code,
        "request_id": current_context().get("request_id"),
    }
    if errors:
        body["errors"] = list(errors)
    body.update(extra or {})
    return JSONResponse(body, status_code=status, headers=headers, media_type=PROBLEM_JSON)


def _pointer(loc: Sequence[int | str]) -> str:
    """A JSON pointer into the request: ("body", "records", 0) -> "#/body/records/0"."""
    return "#/" + "/".join(str(part).replace("~", "~0").replace("/", "~1") for part in loc)


def _on_problem(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ProblemError)
    policy = (exc.extra or {}).get("policy")
    if exc.status in (413, 429) and isinstance(policy, str):
        quota_rejected(policy)  # a quota or limit refused it (celeriac_quota_rejections_total)
    return problem_response(
        request,
        status=exc.status,
        code=exc.code,
        title=exc.title,
        detail=exc.detail,
        errors=exc.errors,
        headers=exc.headers,
        extra=exc.extra,
    )


def _on_validation(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = list(exc.errors())
    if any(e.get("type") == "json_invalid" for e in errors):
        return problem_response(
            request,
            status=400,
            code="malformed-body",
            title="Malformed request body",
            detail="the request body is not valid JSON",
        )
    listed = [
        {"pointer": _pointer(e.get("loc", ())), "detail": str(e.get("msg", "invalid"))}
        for e in errors
    ]
    summary = "; ".join(f"{item['pointer']}: {item['detail']}" for item in listed[:3])
    return problem_response(
        request,
        status=422,
        code="validation-failed",
        title="Validation failed",
        detail=f"the request is not valid: {summary}",
        errors=listed,
    )


def _on_http(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code, title = _STATUS_CODES.get(exc.status_code, ("error", "Error"))
    detail = exc.detail if isinstance(exc.detail, str) else title
    headers = dict(exc.headers or {})
    if exc.status_code == 404 and detail == "Not Found":
        detail = f"no route matches {request.method} {request.url.path}"
    if exc.status_code == 405:
        # Starlette names only the first matching route's methods; list every route's.
        allowed = _allowed_methods(request)
        headers["Allow"] = ", ".join(allowed)
        detail = f"{request.method} is not allowed here; use {' or '.join(allowed)}"
    return problem_response(
        request,
        status=exc.status_code,
        code=code,
        title=title,
        detail=detail,
        headers=headers,
    )


def _allowed_methods(request: Request) -> list[str]:
    methods: set[str] = set()
    for route in request.app.router.routes:
        match, _ = route.matches({**request.scope, "method": "GET"})
        if match is not Match.NONE:
            methods |= set(getattr(route, "methods", None) or ())
    if "GET" in methods:
        methods.add("HEAD")
    return sorted(methods)


def _on_data_error(request: Request, exc: Exception) -> JSONResponse:
    """The database refused a value the schemas let through (a NUL character in text, for
    one): the client's input, rejected whole, since the transaction rolled back."""
    assert isinstance(exc, DataError)
    logger.info("the database refused a value: %s", exc.orig)
    return problem_response(
        request,
        status=422,
        code="validation-failed",
        title="Validation failed",
        detail="a value in the request cannot be stored (text may not contain NUL "
        "characters, numbers must fit their fields); nothing was changed",
    )


# A dependency that is down or hung: PostgreSQL (refused, reset, pool exhausted), the
# cache Redis (refused, timed out) or the broker. The client can do nothing but wait.
UNAVAILABLE: dict[type[Exception], str] = {
    sqlalchemy.exc.OperationalError: "the database",
    sqlalchemy.exc.InterfaceError: "the database",
    sqlalchemy.exc.TimeoutError: "the database",
    redis.exceptions.ConnectionError: "the cache",
    redis.exceptions.TimeoutError: "the cache",
    kombu.exceptions.OperationalError: "the broker",
}
RETRY_AFTER_UNAVAILABLE = "5"


def _on_unavailable(request: Request, exc: Exception) -> JSONResponse:
    """503 with ``Retry-After``: nothing the client sent is wrong, and a half-done
    request rolled back with its transaction."""
    service = next(
        (name for kind, name in UNAVAILABLE.items() if isinstance(exc, kind)), "a service"
    )
    logger.warning("%s is unavailable: %s: %s", service, type(exc).__name__, exc)
    return problem_response(
        request,
        status=503,
        code="service-unavailable",
        title="Service unavailable",
        detail=f"{service} is unavailable at the moment; nothing was changed, retry shortly",
        headers={"Retry-After": RETRY_AFTER_UNAVAILABLE},
    )


def install_problem_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ProblemError, _on_problem)
    app.add_exception_handler(RequestValidationError, _on_validation)
    app.add_exception_handler(StarletteHTTPException, _on_http)
    app.add_exception_handler(DataError, _on_data_error)
    for kind in UNAVAILABLE:
        app.add_exception_handler(kind, _on_unavailable)


def problem_openapi(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries documenting problem answers for ``statuses``."""
    return {
        status: {
            "description": _STATUS_CODES.get(status, ("", "Error"))[1],
            "content": {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/Problem"}}},
        }
        for status in statuses
    }
