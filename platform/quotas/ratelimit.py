"""Tenants' request rate limits, enforced atomically across every API process.

A token bucket per tenant: ``request_burst`` requests at once, refilled at
``requests_per_second``. It is kept as GCRA (the generic cell rate algorithm: one number per
tenant, the "theoretical arrival time" of the next request) by one Lua script on the shared
Redis, so a decision is one round trip and exact whatever the number of API processes.

Why a script of our own and not the ``limits`` library: ``limits`` offers fixed, moving
and sliding windows, not a token bucket, so "burst and sustained" would be two limits
checked in turn (two round trips that are not atomic together), and the numbers the
RateLimit headers need come from ``get_window_stats``, one more round trip per limit. Its
moving window also keeps one sorted-set entry per admitted request (a burst of 1,000 is
1,000 entries per tenant). GCRA answers admit/refuse, remaining and reset in one call and
one key. On a job submission the same call also reserves the job against the tenant's
monthly quota (``celeriac.platform.quotas.monthly``), so ``POST /v1/jobs`` still costs one
round trip.

The script reads Redis's clock (``TIME``), so API hosts whose clocks disagree still share
one bucket. Without Redis (the embedded mode, one machine) the same algorithm runs in
process. If Redis fails, requests are admitted (and a warning logged): a rate limit
protects the platform and must not take it down with its cache.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
import uuid
import weakref
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Protocol

import redis.asyncio
import redis.exceptions

from celeriac.platform.quotas.plans import Limits
from celeriac.platform.settings import get_settings

logger = logging.getLogger(__name__)

KEY = "celeriac:rate:{tenant_id}"
REQUESTS_POLICY = "requests"

# KEYS[1]: the tenant's theoretical arrival time (microseconds on Redis's clock);
# KEYS[2], for a job submission only: the tenant's monthly job counter.
# ARGV[1]: emission interval (microseconds per request), ARGV[2]: burst, ARGV[3]: the
# monthly job limit (with KEYS[2]).
# Returns {admitted (0/1), remaining, microseconds until the bucket is full, microseconds
# until a refused request would be admitted, monthly state, monthly count}; the monthly
# state is 1 reserved, 0 refused (the quota is used up), -1 the counter must be seeded
# first, -2 not asked (or the request was refused by the rate limit).
_GCRA = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local new_tat = tat + interval
local allow_at = new_tat - burst * interval
if allow_at > now then
  return {0, 0, tat - now, allow_at - now, -2, 0}
end
redis.call('SET', KEYS[1], string.format('%.0f', new_tat),
           'PX', math.ceil((new_tat - now) / 1000) + 1000)
local monthly, count = -2, 0
if KEYS[2] then
  local current = redis.call('GET', KEYS[2])
  if not current then
    monthly = -1
  else
    count = tonumber(current)
    if count < tonumber(ARGV[3]) then
      count = redis.call('INCR', KEYS[2])
      monthly = 1
    else
      monthly = 0
    end
  end
end
return {1, math.floor((now - allow_at) / interval), new_tat - now, 0, monthly, count}
"""
MONTHLY_RESERVED, MONTHLY_REFUSED, MONTHLY_UNSEEDED = 1, 0, -1


@dataclass(frozen=True)
class MonthlyAsk:
    """Reserve one job of the month's quota in the same call."""

    key: str
    limit: int


@dataclass(frozen=True)
class PolicyStatus:
    """One quota policy as the RateLimit headers show it (IETF httpapi ratelimit-headers):
    ``quota`` units per ``window`` seconds, ``remaining`` now, full again in ``reset``."""

    name: str
    quota: int
    window: int
    remaining: int
    reset: int

    def policy_item(self) -> str:
        return f'"{self.name}";q={self.quota};w={self.window}'

    def status_item(self) -> str:
        return f'"{self.name}";r={self.remaining};t={self.reset}'


@dataclass(frozen=True)
class RateDecision:
    admitted: bool
    status: PolicyStatus
    retry_after: float
    # With a MonthlyAsk: (MONTHLY_* state, the month's count); None when not asked or
    # when this limiter does not count months (the caller then uses the monthly counter).
    monthly: tuple[int, int] | None = None


def _interval_us(limits: Limits) -> float:
    return 1_000_000 / limits.requests_per_second


def _decision(limits: Limits, admitted: bool, remaining: int, full_in_us: float,
              retry_us: float, monthly: tuple[int, int] | None = None) -> RateDecision:  # fmt: skip
    status = PolicyStatus(
        name=REQUESTS_POLICY,
        quota=limits.request_burst,
        # The time an empty bucket takes to fill: "burst requests per window".
        window=max(1, math.ceil(limits.request_burst / limits.requests_per_second)),
        remaining=max(0, int(remaining)),
        reset=max(0, math.ceil(full_in_us / 1_000_000)),
    )
    return RateDecision(admitted, status, retry_us / 1_000_000, monthly)


class RateLimiter(Protocol):
    async def hit(
        self, tenant_id: uuid.UUID, limits: Limits, monthly: MonthlyAsk | None = None
    ) -> RateDecision | None:
        """Count one request; None when the limiter is unavailable (admit it)."""
        ...


class RedisRateLimiter:
    """The shared limiter: one EVALSHA per request on the cache Redis."""

    def __init__(self, url: str) -> None:
        self.url = url
        # redis.asyncio connections belong to the event loop that made them (a test
        # client runs its own loop): one client per loop.
        self._clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Any] = (
            weakref.WeakKeyDictionary()
        )

    def _script(self) -> Any:
        loop = asyncio.get_running_loop()
        found = self._clients.get(loop)
        if found is None:
            client = redis.asyncio.Redis.from_url(
                self.url, socket_timeout=1, socket_connect_timeout=1
            )
            found = self._clients[loop] = client.register_script(_GCRA)
        return found

    async def hit(
        self, tenant_id: uuid.UUID, limits: Limits, monthly: MonthlyAsk | None = None
    ) -> RateDecision | None:
        keys = [KEY.format(tenant_id=tenant_id)]
        args: list[float | int] = [_interval_us(limits), limits.request_burst]
        if monthly is not None:
            keys.append(monthly.key)
            args.append(monthly.limit)
        try:
            admitted, remaining, full_in, retry, state, count = await self._script()(
                keys=keys, args=args
            )
        except (redis.exceptions.RedisError, OSError) as exc:
            logger.warning("rate limit not checked (Redis failed): %s", exc)
            return None
        asked = (int(state), int(count)) if monthly is not None and admitted else None
        return _decision(limits, bool(admitted), int(remaining), float(full_in), float(retry),
                         asked)  # fmt: skip


class LocalRateLimiter:
    """The embedded mode's limiter: the same algorithm in this process."""

    def __init__(self) -> None:
        self._tat: dict[uuid.UUID, float] = {}
        self._lock = threading.Lock()

    async def hit(
        self, tenant_id: uuid.UUID, limits: Limits, monthly: MonthlyAsk | None = None
    ) -> RateDecision | None:
        # Months are counted by the monthly counter (celeriac.platform.quotas.monthly).
        return self.hit_now(tenant_id, limits, time.monotonic() * 1_000_000)

    def hit_now(self, tenant_id: uuid.UUID, limits: Limits, now: float) -> RateDecision:
        interval = _interval_us(limits)
        with self._lock:
            tat = max(self._tat.get(tenant_id, 0.0), now)
            new_tat = tat + interval
            allow_at = new_tat - limits.request_burst * interval
            if allow_at > now:
                return _decision(limits, False, 0, tat - now, allow_at - now)
            self._tat[tenant_id] = new_tat
        return _decision(limits, True, math.floor((now - allow_at) / interval), new_tat - now, 0)


@lru_cache(maxsize=1)
def rate_limiter() -> RateLimiter:
    """The process's limiter: shared through Redis when one is configured."""
    url = get_settings().redis_url
    return RedisRateLimiter(url) if url else LocalRateLimiter()
