"""The checks tenant requests go through, on the event loop, and the headers they leave.

A tenant request's rate limit is checked once it is authenticated and its scopes allow the
route (a 401 or 403 consumes nothing): the tenant's limits come from the process's cache
(no I/O while it is fresh) and the decision from one round trip to Redis. What the checks
learn is kept in the request's state, and :class:`RateLimitHeaders` writes it into the
answer as ``RateLimit-Policy`` and ``RateLimit`` (IETF httpapi ratelimit-headers draft).
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass
from datetime import datetime

from fastapi import Request
from fastapi.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from celeriac.platform.errors import QuotaExceeded
from celeriac.platform.models import utcnow
from celeriac.platform.quotas.cache import quota_cache
from celeriac.platform.quotas.monthly import POLICY, counter_key, monthly_counter, monthly_status
from celeriac.platform.quotas.plans import Limits
from celeriac.platform.quotas.ratelimit import (
    MONTHLY_RESERVED,
    MONTHLY_UNSEEDED,
    MonthlyAsk,
    PolicyStatus,
    RateDecision,
    rate_limiter,
)
from celeriac.platform.quotas.service import next_month_start

_POLICIES = "quota_policies"
_LIMITS = "tenant_limits"
_MONTHLY = "monthly_reservation"


@dataclass(frozen=True)
class MonthlyReservation:
    """A job submission's place in its tenant's monthly quota (or its refusal)."""

    tenant_id: uuid.UUID
    at: datetime
    limit: int
    reserved: bool
    status: PolicyStatus


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


async def check_rate(request: Request, tenant_id: uuid.UUID, *, counts_job: bool = False) -> Limits:
    """Count the request against the tenant's rate limit (429 when it is over) and, for a
    job submission (``counts_job``), reserve the job against the monthly quota in the same
    round trip; :func:`monthly_refusal` says whether the quota was used up."""
    limits = await limits_for(tenant_id)
    state = request.scope.setdefault("state", {})
    state[_LIMITS] = limits
    now = utcnow()
    ask = MonthlyAsk(counter_key(tenant_id, now), limits.jobs_per_month) if counts_job else None
    decision = await rate_limiter().hit(tenant_id, limits, ask)
    if decision is None:  # Redis failed: admitted and uncounted, without headers
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
    if counts_job:
        await _reserve_job(request, tenant_id, limits, now, decision)
    return limits


async def _reserve_job(
    request: Request, tenant_id: uuid.UUID, limits: Limits, now: datetime, decision: RateDecision
) -> None:
    outcome = decision.monthly
    if outcome is None or outcome[0] == MONTHLY_UNSEEDED:
        # A new month or a lost counter (seeded from the usage records, once), or a limiter
        # that does not count months (the embedded mode): the monthly counter decides.
        counts = await run_in_threadpool(
            monthly_counter().reserve, {tenant_id: (1, limits.jobs_per_month)}, now
        )
        if counts is None:  # unavailable: admitted, uncounted
            return
        admitted, used = counts[tenant_id]
        reserved = admitted == 1
    else:
        reserved, used = outcome[0] == MONTHLY_RESERVED, outcome[1]
    status = monthly_status(limits.jobs_per_month, used, now)
    add_policy(request, status)
    request.scope["state"][_MONTHLY] = MonthlyReservation(
        tenant_id, now, limits.jobs_per_month, reserved, status
    )


def monthly_refusal(request: Request) -> QuotaExceeded | None:
    """The 429 of a job submission over its tenant's monthly quota, if it is."""
    found = request.scope.get("state", {}).get(_MONTHLY)
    if not isinstance(found, MonthlyReservation) or found.reserved:
        return None
    return QuotaExceeded(
        f"the tenant's quota of {found.limit} jobs per calendar month is used up; it renews "
        f"on {next_month_start(found.at):%Y-%m-%d} 00:00 UTC (an admin can raise it)",
        policy=POLICY,
        limit=found.limit,
        retry_after=found.status.reset,
    )


async def release_job(request: Request) -> None:
    """Give back the request's monthly reservation: its job was not stored (invalid, too
    large, failed) or it was an Idempotency-Key replay of one that was."""
    found = request.scope.get("state", {}).pop(_MONTHLY, None)
    if isinstance(found, MonthlyReservation) and found.reserved:
        release = monthly_counter().release
        # Shielded: a request cancelled meanwhile still gives its reservation back.
        await asyncio.shield(run_in_threadpool(release, {found.tenant_id: 1}, found.at))


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
                        (
                            b"ratelimit-policy",
                            ", ".join(p.policy_item() for p in policies).encode(),
                        ),
                        (b"ratelimit", ", ".join(p.status_item() for p in policies).encode()),
                    ]
            await send(message)

        await self.app(scope, receive, with_headers)
