"""Domain errors that carry their HTTP status and RFC 9457 problem type.

Services raise these; one handler in ``celeriac.platform.api.problems`` renders them as
``application/problem+json``. Another tenant's object is always :class:`NotFound`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar


class ProblemError(Exception):
    """Base of every error a client may see: ``status``, ``code`` and a ``detail``."""

    status: ClassVar[int] = 400
    code: ClassVar[str] = "bad-request"
    title: ClassVar[str] = "Bad request"

    def __init__(
        self,
        detail: str,
        *,
        errors: Sequence[Mapping[str, Any]] | None = None,
        headers: Mapping[str, str] | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.errors = list(errors or [])
        self.headers = dict(headers or {})
        self.extra = dict(extra or {})


class BadRequest(ProblemError):
    pass


class MalformedBody(ProblemError):
    code = "malformed-body"
    title = "Malformed request body"


class Unauthorized(ProblemError):
    status = 401
    code = "unauthorized"
    title = "Unauthorized"

    def __init__(self, detail: str, *, scheme: str = "Bearer", error: str = "invalid_token"):
        super().__init__(
            detail,
            headers={"WWW-Authenticate": f'{scheme} realm="celeriac", error="{error}"'},
        )


class Forbidden(ProblemError):
    status = 403
    code = "forbidden"
    title = "Forbidden"


class TenantSuspended(Forbidden):
    """A suspended tenant's key tried to change something (its reads still answer)."""

    code = "tenant-suspended"
    title = "Tenant suspended"


class MissingScopes(Forbidden):
    code = "insufficient-scope"
    title = "Insufficient scope"

    def __init__(self, missing: Sequence[str]) -> None:
        super().__init__(
            f"this API key lacks the scope(s) {', '.join(missing)}",
            extra={"missing_scopes": list(missing)},
        )


class NotFound(ProblemError):
    status = 404
    code = "not-found"
    title = "Not found"


class Conflict(ProblemError):
    status = 409
    code = "conflict"
    title = "Conflict"


class PayloadTooLarge(ProblemError):
    status = 413
    code = "payload-too-large"
    title = "Payload too large"


class ValidationFailed(ProblemError):
    status = 422
    code = "validation-failed"
    title = "Validation failed"


class TooManyRequests(ProblemError):
    status = 429
    code = "quota-exceeded"
    title = "Quota exceeded"


class ServiceUnavailable(ProblemError):
    status = 503
    code = "service-unavailable"
    title = "Service unavailable"


class QuotaExceeded(TooManyRequests):
    """A quota policy refused the request: the body names the policy and its limit, and
    ``Retry-After`` says when trying again can succeed."""

    def __init__(self, detail: str, *, policy: str, limit: int, retry_after: float) -> None:
        super().__init__(
            detail,
            headers={"Retry-After": str(max(1, math.ceil(retry_after)))},
            extra={"policy": policy, "limit": limit},
        )
