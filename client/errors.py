"""Exceptions of the SDK. An error answer of the API (RFC 9457 ``application/problem+json``)
raises :class:`APIError` (a subclass per status), carrying the problem's fields."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import httpx


class CeleriacError(Exception):
    """Base of every exception the SDK raises."""


class ConnectionFailed(CeleriacError):
    """The API could not be reached (after the retries the client allows)."""


class JobTimeout(CeleriacError, TimeoutError):
    """``job.wait(timeout=...)`` ran out before the job ended; ``.job`` is its last state."""

    def __init__(self, message: str, job: Any) -> None:
        super().__init__(message)
        self.job = job


class APIError(CeleriacError):
    """An error answer. ``status``, ``type``, ``title``, ``detail``, ``code``, ``instance``,
    ``errors`` (field pointers) and ``request_id`` come from the problem document; any
    other members (``limit``, ``policy``, ``missing_scopes``...) are in ``extra``."""

    def __init__(self, response: httpx.Response, problem: Mapping[str, Any]) -> None:
        self.response = response
        self.problem = dict(problem)
        self.status: int = int(problem.get("status") or response.status_code)
        self.type: str = str(problem.get("type") or "about:blank")
        self.title: str = str(problem.get("title") or response.reason_phrase)
        self.detail: str = str(problem.get("detail") or response.text[:500])
        self.code: str | None = problem.get("code")
        self.instance: str | None = problem.get("instance")
        self.request_id: str | None = problem.get("request_id")
        self.errors: list[dict[str, Any]] = list(problem.get("errors") or [])
        known = {"status", "type", "title", "detail", "code", "instance", "request_id", "errors"}
        self.extra: dict[str, Any] = {k: v for k, v in problem.items() if k not in known}
        self.retry_after: float | None = retry_after_seconds(response)
        super().__init__(f"{self.status} {self.title}: {self.detail}")


class BadRequest(APIError):
    """400: the request is malformed."""


class AuthenticationFailed(APIError):
    """401: the API key is missing, wrong, expired or revoked."""


class PermissionDenied(APIError):
    """403: the key lacks a scope (``extra["missing_scopes"]``) or the tenant is suspended."""


class NotFound(APIError):
    """404: no such object for this tenant (another tenant's objects are 404 too)."""


class Conflict(APIError):
    """409: the object is not in a state that allows the call (e.g. deleting a running job)."""


class Gone(APIError):
    """410: the object existed but its data was deleted."""


class PayloadTooLarge(APIError):
    """413: the submission exceeds a limit (``extra["policy"]``, ``extra["limit"]``)."""


class ValidationFailed(APIError):
    """422: the request's content is invalid; ``errors`` points at the fields."""


class RateLimited(APIError):
    """429: a quota or rate limit; ``retry_after`` says when to try again."""


class ServiceUnavailable(APIError):
    """503: a service the API needs is down; ``retry_after`` says when to try again."""


class ServerError(APIError):
    """Another 5xx answer."""


_BY_STATUS: dict[int, type[APIError]] = {
    400: BadRequest,
    401: AuthenticationFailed,
    403: PermissionDenied,
    404: NotFound,
    409: Conflict,
    410: Gone,
    413: PayloadTooLarge,
    422: ValidationFailed,
    429: RateLimited,
    503: ServiceUnavailable,
}


def error_for(response: httpx.Response) -> APIError:
    """The exception for an error answer (problem+json, or whatever the body is)."""
    problem: dict[str, Any] = {}
    try:
        body = response.json()
        if isinstance(body, dict):
            problem = body
    except ValueError:
        pass
    status = response.status_code
    cls = _BY_STATUS.get(status) or (ServerError if status >= 500 else APIError)
    return cls(response, problem)


def retry_after_seconds(response: httpx.Response) -> float | None:
    """``Retry-After`` in seconds (delta-seconds or an HTTP date), None when absent."""
    value = response.headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass

    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())
