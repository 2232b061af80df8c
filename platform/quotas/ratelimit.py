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
one key. The requests of a process that wait while a call is in flight go together in
the next call, sent from a thread of the limiter's own (as ADR 0006's writer does for job
rows), so under load a request costs a fraction of a round trip and the event loop never
touches the socket. On a job submission the same call also reserves the job
against the tenant's monthly quota (``celeriac.platform.quotas.monthly``), so
``POST /v1/jobs`` still costs at most one round trip.

The script reads Redis's clock (``TIME``), so API hosts whose clocks disagree still share
one bucket. Without Redis (the embedded mode, one machine) the same algorithm runs in
process. If Redis fails, requests are admitted (and a warning logged): a rate limit
protects the platform and must not take it down with its cache.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import queue
import threading
import time
import uuid
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Protocol

import redis
import redis.exceptions

from celeriac.platform.quotas.plans import Limits
from celeriac.platform.settings import get_settings

logger = logging.getLogger(__name__)

KEY = "celeriac:rate:{tenant_id}"
REQUESTS_POLICY = "requests"

# Decides a batch of requests, in order, atomically (one call for every request that
# reached the limiter while the previous call was in flight). ARGV[1]: the number of
# requests; then per request: its number of keys (1, or 2 for a job submission), the
# emission interval (microseconds per request), the burst, the monthly job limit. KEYS, per
# request: the tenant's theoretical arrival time (microseconds on Redis's clock), then for
# a job submission the tenant's monthly job counter. Returns six values per request:
# admitted (0/1), remaining, microseconds until the bucket is full, microseconds until a
# refused request would be admitted, the monthly state (1 reserved, 0 refused: the quota
# is used up, -1 the counter must be seeded first, -2 not asked or rate-limited) and the
# month's count.
_GCRA = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local out = {}
local k, a = 1, 2
for _ = 1, tonumber(ARGV[1]) do
  local nkeys = tonumber(ARGV[a])
  local interval = tonumber(ARGV[a + 1])
  local burst = tonumber(ARGV[a + 2])
  local limit = tonumber(ARGV[a + 3])
  local rate_key, month_key = KEYS[k], nil
  if nkeys == 2 then month_key = KEYS[k + 1] end
  k, a = k + nkeys, a + 4
  local tat = tonumber(redis.call('GET', rate_key) or '0')
  if tat < now then tat = now end
  local new_tat = tat + interval
  local allow_at = new_tat - burst * interval
  if allow_at > now then
    for _, v in ipairs({0, 0, tat - now, allow_at - now, -2, 0}) do out[#out + 1] = v end
  else
    redis.call('SET', rate_key, string.format('%.0f', new_tat),
               'PX', math.ceil((new_tat - now) / 1000) + 1000)
    local monthly, count = -2, 0
    if month_key then
      local current = redis.call('GET', month_key)
      if not current then
        monthly = -1
      else
        count = tonumber(current)
        if count < limit then
          count = redis.call('INCR', month_key)
          monthly = 1
        else
          monthly = 0
        end
      end
    end
    for _, v in ipairs({1, math.floor((now - allow_at) / interval), new_tat - now, 0,
                        monthly, count}) do out[#out + 1] = v end
  end
end
return out
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


def _decision(
    limits: Limits,
    admitted: bool,
    remaining: int,
    full_in_us: float,
    retry_us: float,
    monthly: tuple[int, int] | None = None,
) -> RateDecision:
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


_Waiting = tuple[
    list[str], list[float | int], "asyncio.Future[list[int]]", asyncio.AbstractEventLoop
]
MAX_BATCH = 500


class _LimiterThread:
    """Sends the requests waiting for the limiter, all of them in one script call, from a
    thread of its own.

    Group commit again (docs/adr/0006): whatever arrived while the previous call was in
    flight goes in the next one; alone, a request is a batch of one and waits for nothing.
    Each call is atomic in Redis, so it decides exactly what one call per request would
    have. The thread keeps the socket off the event loop: py-spy showed a call made from
    the loop spending most of its time in the socket write (waking Redis gives it the
    CPU), during which the loop served nobody."""

    def __init__(self, script: Any) -> None:
        self.script = script
        self._queue: queue.SimpleQueue[_Waiting] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def submit(self, keys: list[str], args: list[float | int]) -> asyncio.Future[list[int]]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[int]] = loop.create_future()
        if self._thread is None:
            with self._lock:
                if self._thread is None:
                    self._thread = threading.Thread(
                        target=self._run, name="celeriac-rate-limiter", daemon=True
                    )
                    self._thread.start()
        self._queue.put((keys, args, future, loop))
        return future

    def _run(self) -> None:
        while True:
            batch = [self._queue.get()]
            while len(batch) < MAX_BATCH:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            keys = [key for entry in batch for key in entry[0]]
            args: list[float | int] = [len(batch)]
            for entry in batch:
                args += entry[1]
            outcome: list[int] | Exception
            try:
                outcome = self.script(keys=keys, args=args)
            except Exception as exc:  # every request of the batch sees it (fail open)
                outcome = exc
            by_loop: dict[asyncio.AbstractEventLoop, list[tuple[Any, Any]]] = {}
            for index, (_, _, future, loop) in enumerate(batch):
                result = (
                    outcome
                    if isinstance(outcome, Exception)
                    else outcome[6 * index : 6 * index + 6]
                )
                by_loop.setdefault(loop, []).append((future, result))
            for loop, settled in by_loop.items():
                with contextlib.suppress(RuntimeError):  # that loop has closed
                    loop.call_soon_threadsafe(_settle, settled)


def _settle(settled: list[tuple[Any, Any]]) -> None:
    for future, result in settled:
        if future.done():  # the request was cancelled meanwhile
            continue
        if isinstance(result, Exception):
            future.set_exception(result)
        else:
            future.set_result(result)


class RedisRateLimiter:
    """The shared limiter: each request is decided by the script on the cache Redis, in
    one call with the other requests of its process waiting at that moment."""

    def __init__(self, url: str) -> None:
        client = redis.Redis.from_url(url, socket_timeout=1, socket_connect_timeout=1)
        self._sender = _LimiterThread(client.register_script(_GCRA))

    async def hit(
        self, tenant_id: uuid.UUID, limits: Limits, monthly: MonthlyAsk | None = None
    ) -> RateDecision | None:
        keys = [KEY.format(tenant_id=tenant_id)]
        args: list[float | int] = [1, _interval_us(limits), limits.request_burst, 0]
        if monthly is not None:
            keys.append(monthly.key)
            args[0], args[3] = 2, monthly.limit
        try:
            admitted, remaining, full_in, retry, state, count = await self._sender.submit(
                keys, args
            )
        except (redis.exceptions.RedisError, OSError) as exc:
            logger.warning("rate limit not checked (Redis failed): %s", exc)
            return None
        asked = (int(state), int(count)) if monthly is not None and admitted else None
        return _decision(
            limits, bool(admitted), int(remaining), float(full_in), float(retry), asked
        )


class LocalRateLimiter:
    """The embedded mode's limiter: the same algorithm in this process."""

    def __init__(self) -> None:
        self._tat: dict[uuid.UUID, float] = {}
        self._lock = threading.Lock()

    async def hit(
        self,
        tenant_id: uuid.UUID,
        limits: Limits,
        monthly: MonthlyAsk | None = None,  # noqa: ARG002 - the RateLimiter protocol's
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
