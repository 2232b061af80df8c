"""The checks tenant requests go through, on the event loop, and the headers they leave.

A tenant request's rate limit is checked once it is authenticated and its scopes allow the
route (a 401 or 403 consumes nothing; the order is :func:`celeriac.platform.api.admission.admit`'s):
the tenant's limits come from the process's cache (no I/O while it is fresh) and the
decision from one round trip to Redis. :func:`check_rate` returns what it learnt, typed
(:class:`RateCheck`); the one thing left in the request's scope is the list of policies
that :class:`RateLimitHeaders` writes into the answer as ``RateLimit-Policy`` and
``RateLimit`` (IETF httpapi ratelimit-headers draft), since a middleware sees every answer,
refusals and Idempotency-Key replays included.
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


@dataclass(frozen=True)
class MonthlyReservation:
    """A job submission's place in its tenant's monthly quota (or its refusal)."""

    tenant_id: uuid.UUID
    at: datetime
    limit: int
    reserved: bool
    status: PolicyStatus

    def refusal(self) -> QuotaExceeded | None:
        """The 429 of a submission over its tenant's monthly quota, if it is."""
        if self.reserved:
            return None
        return QuotaExceeded(
            f"the tenant's quota of {self.limit} jobs per calendar month is used up; it renews "
            f"on {next_month_start(self.at):%Y-%m-%d} 00:00 UTC (an admin can raise it)",
            policy=POLICY,
            limit=self.limit,
            retry_after=self.status.reset,
        )

    async def release(self) -> None:
        """Give the reservation back (no-op when none was made)."""
        if self.reserved:
            release = monthly_counter().release
            # Shielded: a request cancelled meanwhile still gives its reservation back.
            await asyncio.shield(run_in_threadpool(release, {self.tenant_id: 1}, self.at))


@dataclass(frozen=True)
class RateCheck:
    """What :func:`check_rate` admitted: the tenant's limits and, for a job submission,
    its monthly reservation (None when not asked, or when the counter was unavailable:
    admitted, uncounted)."""

    limits: Limits
    monthly: MonthlyReservation | None = None


async def limits_for(tenant_id: uuid.UUID) -> Limits:
    """The tenant's limits: from the cache on the event loop, or loaded in the pool."""
    cache = quota_cache()
    limits = cache.cached(tenant_id)
    if limits is None:
        limits = await run_in_threadpool(cache.get, tenant_id)
    return limits


def add_policy(request: Request, status: PolicyStatus) -> None:
    """Show ``status`` in the answer's RateLimit headers."""
    state = request.scope.setdefault("state", {})
    policies = [p for p in _policies(request.scope) if p.name != status.name]
    state[_POLICIES] = (*policies, status)


def _policies(scope: Scope) -> tuple[PolicyStatus, ...]:
    """The policies :func:`add_policy` left for the answer's headers."""
    found = scope.get("state", {}).get(_POLICIES, ())
    return found if isinstance(found, tuple) else ()


async def check_rate(
    request: Request, tenant_id: uuid.UUID, *, counts_job: bool = False
) -> RateCheck:
    """Count the request against the tenant's rate limit (429 when it is over) and, for a
    job submission (``counts_job``), reserve the job against the monthly quota in the same
    round trip; the reservation's :meth:`~MonthlyReservation.refusal` says whether the
    quota was used up (raised by the caller, after the Idempotency-Key)."""
    limits = await limits_for(tenant_id)
    now = utcnow()
    ask = MonthlyAsk(counter_key(tenant_id, now), limits.jobs_per_month) if counts_job else None
    decision = await rate_limiter().hit(tenant_id, limits, ask)
    if decision is None:  # Redis failed: admitted and uncounted, without headers
        return RateCheck(limits)
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
    if not counts_job:
        return RateCheck(limits)
    monthly = await _reserve_job(tenant_id, limits, now, decision)
    if monthly is not None:
        add_policy(request, monthly.status)
    return RateCheck(limits, monthly)


async def _reserve_job(
    tenant_id: uuid.UUID, limits: Limits, now: datetime, decision: RateDecision
) -> MonthlyReservation | None:
    outcome = decision.monthly
    if outcome is None or outcome[0] == MONTHLY_UNSEEDED:
        # A new month or a lost counter (seeded from the usage records, once), or a limiter
        # that does not count months (the embedded mode): the monthly counter decides.
        counts = await run_in_threadpool(
            monthly_counter().reserve, {tenant_id: (1, limits.jobs_per_month)}, now
        )
        if counts is None:  # unavailable: admitted, uncounted
            return None
        admitted, used = counts[tenant_id]
        reserved = admitted == 1
    else:
        reserved, used = outcome[0] == MONTHLY_RESERVED, outcome[1]
    status = monthly_status(limits.jobs_per_month, used, now)
    return MonthlyReservation(tenant_id, now, limits.jobs_per_month, reserved, status)


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
                policies = _policies(scope)
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
