"""Request admission: what an authenticated tenant request passes before its route runs.

:func:`admit` runs after :class:`celeriac.platform.api.deps.Authenticator` (the API key, then
the route's scopes), so a 401 or 403 consumes nothing. In order:

1. the rate limit (429), and for a job submission the monthly job reservation in the same
   Redis round trip (:func:`celeriac.platform.quotas.enforce.check_rate`);
2. the Idempotency-Key (:func:`celeriac.platform.api.idempotency.reserve`), after the rate
   limit, so that a replay counts as a request like any other. A replay (or a conflict)
   gives the monthly reservation back: it is not a new job;
3. the monthly refusal (429), after the Idempotency-Key, so that a retried submission gets
   its first answer even when the month's quota is used up meanwhile.

The result is an :class:`Admission`: the tenant, its limits and the reservations. A route
that stores a job holds it with ``async with admission:``, which gives the monthly
reservation back if the route fails.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass
from types import TracebackType

from fastapi import Request

from celeriac.platform.api.idempotency import reserve
from celeriac.platform.auth.context import TenantContext
from celeriac.platform.quotas.enforce import MonthlyReservation, check_rate
from celeriac.platform.quotas.plans import Limits


@dataclass
class Admission:
    """An admitted tenant request: who calls, the tenant's limits, the monthly job
    reservation (job submissions; None otherwise, or when the counter was unavailable)
    and the Idempotency-Key reservation's id (None without a key).

    ``async with admission:`` around the work that stores the job gives the monthly
    reservation back when that work raises (invalid, too large, a failure), but not when
    the client leaves (``CancelledError``): its job may be stored, and beat corrects a
    count that drifted."""

    ctx: TenantContext
    limits: Limits
    monthly: MonthlyReservation | None = None
    idempotency_key_id: uuid.UUID | None = None

    async def release(self) -> None:
        """Give the monthly job reservation back (once; no-op without one)."""
        monthly, self.monthly = self.monthly, None
        if monthly is not None:
            await monthly.release()

    async def __aenter__(self) -> Admission:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is not None and not isinstance(exc, asyncio.CancelledError):
            await self.release()


async def admit(
    request: Request, ctx: TenantContext, *, counts_job: bool = False, idempotency: bool = True
) -> Admission:
    """Admit ``ctx``'s request, in the order of this module's docstring: 429 over the
    rate limit; the Idempotency-Key's replay or conflict (unless ``idempotency`` is off:
    the console's forms send none); 429 over the monthly job quota (``counts_job``)."""
    rate = await check_rate(request, ctx.tenant_id, counts_job=counts_job)
    admission = Admission(ctx, rate.limits, rate.monthly)
    if idempotency:
        try:
            principal = f"tenant:{ctx.tenant_id}"
            admission.idempotency_key_id = await reserve(request, principal, ctx.tenant_id)
        except BaseException:  # a replay, a conflict, or the client gone: no job comes of it
            await admission.release()
            raise
    refusal = rate.monthly.refusal() if rate.monthly is not None else None
    if refusal is not None:
        raise refusal
    return admission
