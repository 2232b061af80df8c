"""The checks tenant requests go through, on the event loop, and the headers they leave.

A tenant request's rate limit is checked once it is authenticated and its scopes allow the
route (a 401 or 403 consumes nothing): the tenant's limits come from the process's cache
(no I/O while it is fresh) and the decision from one round trip to Redis. What the checks
learn is kept in the request's state, and :class:`RateLimitHeaders` writes it into the
answer as ``RateLimit-Policy`` and ``RateLimit`` (IETF httpapi ratelimit-headers draft).
"""

from __future__ import annotations

import uuid

from fastapi import Request
from fastapi.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from celeriac.platform.errors import QuotaExceeded
from celeriac.platform.quotas.cache import quota_cache
from celeriac.platform.quotas.plans import Limits
from celeriac.platform.quotas.ratelimit import PolicyStatus, rate_limiter

_POLICIES = "quota_policies"
_LIMITS = "tenant_limits"


async def limits_for(tenant_id: uuid.UUID) -> Limits:
    """The tenant's limits: from the cache on the event loop, or loaded in the pool."""
    cache = quota_cache()
    limits = cache.cached(tenant_id)
    if limits is None:
        limits = await run_in_threadpool(cache.get, tenant_id)
    return limits


def add_policy(request: Request, status: PolicyStatus) -> None:
    """Show ``status`` in the answer's RateLimit headers."""
    policies: list[PolicyStatus] = request.scope.setdefault("state", {}).setdefault(_POLICIES, [])
    policies[:] = [p for p in policies if p.name != status.name] + [status]


def request_limits(request: Request) -> Limits | None:
    """The limits :func:`check_rate` found for this request's tenant."""
    limits = request.scope.get("state", {}).get(_LIMITS)
    return limits if isinstance(limits, Limits) else None


async def check_rate(request: Request, tenant_id: uuid.UUID) -> Limits:
    """Count the request against the tenant's rate limit; 429 when it is over."""
    limits = await limits_for(tenant_id)
    request.scope.setdefault("state", {})[_LIMITS] = limits
    decision = await rate_limiter().hit(tenant_id, limits)
    if decision is None:  # Redis failed: admitted, without headers
        return limits
    add_policy(request, decision.status)
    if not decision.admitted:
        raise QuotaExceeded(
            f"more than {limits.request_burst} requests at once or "
            f"{limits.requests_per_second} per second sustained; retry after the time "
            "in Retry-After",
            policy=decision.status.name,
            limit=limits.requests_per_second,
            retry_after=decision.retry_after,
        )
    return limits


class RateLimitHeaders:
    """Writes the request's quota policies into its answer (plain ASGI middleware)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                policies: list[PolicyStatus] = scope.get("state", {}).get(_POLICIES) or []
                if policies:
                    message["headers"] = [
                        *message.get("headers", []),
                        (b"ratelimit-policy",
                         ", ".join(p.policy_item() for p in policies).encode()),
                        (b"ratelimit", ", ".join(p.status_item() for p in policies).encode()),
                    ]  # fmt: skip
            await send(message)

        await self.app(scope, receive, with_headers)
