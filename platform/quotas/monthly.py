"""Each tenant's count of jobs submitted this calendar month (UTC), kept in Redis.

A job submission reserves one job of its tenant's ``jobs_per_month`` in the same Redis call
as its rate limit (``celeriac.platform.quotas.ratelimit``), once its key and scopes are
accepted: beyond the quota it is refused (429). A submission that then fails (invalid,
too large, not stored) or turns out to be an Idempotency-Key replay gives its reservation
back. The counter of a month is ``celeriac:jobs:<tenant>:<YYYY-MM>``;
when it does not exist (a new month, a flushed or replaced Redis) it is seeded from the
usage records (jobs.submitted since the month began), once, by whichever process needs it
first (SET NX), so the database stays the source of truth and the hot path has no query.

Without Redis (the embedded mode: one API process) the same counts live in the process.
If Redis fails, submissions are admitted and a warning is logged, as for the rate limit.
"""

from __future__ import annotations

import calendar
import logging
import math
import threading
import uuid
from collections.abc import Mapping
from datetime import datetime, timedelta
from functools import lru_cache
from typing import Any, Protocol

import redis
import redis.exceptions
from sqlalchemy.orm import Session

from celeriac.platform.db import get_engine
from celeriac.platform.quotas.ratelimit import PolicyStatus
from celeriac.platform.quotas.service import jobs_submitted_since, month_start, next_month_start
from celeriac.platform.redis_client import get_redis

logger = logging.getLogger(__name__)

POLICY = "jobs-monthly"
KEY = "celeriac:jobs:{tenant_id}:{month}"
# A month's counter outlives its month by a week (late reads; the beat reconciler).
KEEP_AFTER_MONTH = timedelta(days=7)

# KEYS: one counter per tenant. ARGV: (wanted, limit) per key.
# Returns (admitted, count after) per key; admitted is -1 when the counter must be seeded.
_RESERVE = """
local out = {}
for i, key in ipairs(KEYS) do
  local wanted = tonumber(ARGV[2 * i - 1])
  local limit = tonumber(ARGV[2 * i])
  local current = redis.call('GET', key)
  if not current then
    out[#out + 1] = -1
    out[#out + 1] = 0
  else
    current = tonumber(current)
    local admitted = math.max(0, math.min(wanted, limit - current))
    if admitted > 0 then current = redis.call('INCRBY', key, admitted) end
    out[#out + 1] = admitted
    out[#out + 1] = current
  end
end
return out
"""


# Compare-and-set: KEYS[1] a counter, ARGV[1] the value it had when the database was
# counted, ARGV[2] that count.
_CORRECT = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'KEEPTTL')
  return 1
end
return 0
"""
OBSERVED = "celeriac:jobs-observed:{month}"  # not matched by KEY's pattern


def month_key(now: datetime) -> str:
    return f"{now:%Y-%m}"


def counter_key(tenant_id: uuid.UUID, now: datetime) -> str:
    return KEY.format(tenant_id=tenant_id, month=month_key(now))


def monthly_status(limit: int, used: int, now: datetime) -> PolicyStatus:
    """The policy as the RateLimit headers show it: ``limit`` jobs per calendar month."""
    days = calendar.monthrange(now.year, now.month)[1]
    return PolicyStatus(
        name=POLICY,
        quota=limit,
        window=days * 86400,
        remaining=max(0, limit - used),
        reset=math.ceil((next_month_start(now) - now).total_seconds()),
    )


def _seed_counts(tenants: list[uuid.UUID], now: datetime) -> dict[uuid.UUID, int]:
    with Session(get_engine()) as session:
        return {t: jobs_submitted_since(session, t, month_start(now)) for t in tenants}


class MonthlyJobCounter(Protocol):
    def reserve(
        self, wanted: Mapping[uuid.UUID, tuple[int, int]], now: datetime
    ) -> dict[uuid.UUID, tuple[int, int]] | None:
        """For each tenant, (jobs wanted, monthly limit) -> (jobs admitted, count after);
        None when the counter is unavailable (everything admitted)."""
        ...

    def release(self, given_back: Mapping[uuid.UUID, int], now: datetime) -> None: ...


class RedisMonthlyJobCounter:
    """Reservations outside the rate-limit call: seeding a missing counter, giving back,
    and batches (any number of tenants in one call)."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self._reserve = client.register_script(_RESERVE)

    def _key(self, tenant_id: uuid.UUID, now: datetime) -> str:
        return counter_key(tenant_id, now)

    def reserve(
        self, wanted: Mapping[uuid.UUID, tuple[int, int]], now: datetime
    ) -> dict[uuid.UUID, tuple[int, int]] | None:
        try:
            found = self._run(dict(wanted), now)
            missing = [t for t, (admitted, _) in found.items() if admitted < 0]
            if missing:
                self._seed(missing, now)
                found |= self._run({t: wanted[t] for t in missing}, now)
        except (redis.exceptions.RedisError, OSError) as exc:
            logger.warning("monthly job quota not checked (Redis failed): %s", exc)
            return None
        return found

    def _run(
        self, wanted: dict[uuid.UUID, tuple[int, int]], now: datetime
    ) -> dict[uuid.UUID, tuple[int, int]]:
        tenants = list(wanted)
        args = [value for t in tenants for value in wanted[t]]
        raw = self._reserve(keys=[self._key(t, now) for t in tenants], args=args)
        return {t: (int(raw[2 * i]), int(raw[2 * i + 1])) for i, t in enumerate(tenants)}

    def _seed(self, tenants: list[uuid.UUID], now: datetime) -> None:
        expires = next_month_start(now) + KEEP_AFTER_MONTH
        with self.client.pipeline(transaction=False) as pipe:
            for tenant_id, count in _seed_counts(tenants, now).items():
                pipe.set(self._key(tenant_id, now), count, nx=True, exat=expires)
            pipe.execute()

    def release(self, given_back: Mapping[uuid.UUID, int], now: datetime) -> None:
        try:
            with self.client.pipeline(transaction=False) as pipe:
                for tenant_id, count in given_back.items():
                    if count:
                        pipe.decrby(self._key(tenant_id, now), count)
                pipe.execute()
        except (redis.exceptions.RedisError, OSError) as exc:
            logger.warning("monthly job reservations not given back: %s", exc)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def reconcile_counters(client: redis.Redis, now: datetime) -> int:
    """Correct this month's counters that drifted from the usage records (a process that
    died between reserving and storing, say): a counter is set to the database's count when
    both differ the same way on two consecutive runs and the counter did not move in
    between. A difference seen once may be a reservation in flight, which commits a moment
    later. Run by beat; returns how many counters were corrected."""
    month = month_key(now)
    observed_key = OBSERVED.format(month=month)
    previous = {_text(k): _text(v) for k, v in client.hgetall(observed_key).items()}
    correct = client.register_script(_CORRECT)
    current: dict[Any, Any] = {}  # key -> "counter:count" (redis-py's mapping type)
    corrected = 0
    for raw in client.scan_iter(match=KEY.format(tenant_id="*", month=month), count=1000):
        key = _text(raw)
        value = client.get(key)
        if value is None:
            continue
        tenant_id = uuid.UUID(key.split(":")[2])
        count = _seed_counts([tenant_id], now)[tenant_id]
        seen = current[key] = f"{int(value)}:{count}"
        if int(value) != count and previous.get(key) == seen:
            corrected += int(correct(keys=[key], args=[int(value), count]))
            logger.warning(
                "monthly job counter corrected from the database",
                extra={"tenant_id": str(tenant_id), "was": int(value), "now": count},
            )
    with client.pipeline() as pipe:
        pipe.delete(observed_key)
        if current:
            pipe.hset(observed_key, mapping=current)
            pipe.expire(observed_key, 86400)
        pipe.execute()
    return corrected


class LocalMonthlyJobCounter:
    """The embedded mode's counter (one API process), seeded from the database."""

    def __init__(self) -> None:
        self._counts: dict[tuple[uuid.UUID, str], int] = {}
        self._lock = threading.Lock()

    def reserve(
        self, wanted: Mapping[uuid.UUID, tuple[int, int]], now: datetime
    ) -> dict[uuid.UUID, tuple[int, int]] | None:
        month = month_key(now)
        with self._lock:
            missing = [t for t in wanted if (t, month) not in self._counts]
        seeded = _seed_counts(missing, now) if missing else {}
        out = {}
        with self._lock:
            for tenant_id, count in seeded.items():
                self._counts.setdefault((tenant_id, month), count)
            for tenant_id, (number, limit) in wanted.items():
                current = self._counts[(tenant_id, month)]
                admitted = max(0, min(number, limit - current))
                self._counts[(tenant_id, month)] = current + admitted
                out[tenant_id] = (admitted, current + admitted)
        return out

    def release(self, given_back: Mapping[uuid.UUID, int], now: datetime) -> None:
        month = month_key(now)
        with self._lock:
            for tenant_id, count in given_back.items():
                key = (tenant_id, month)
                if key in self._counts:
                    self._counts[key] = max(0, self._counts[key] - count)


@lru_cache(maxsize=1)
def monthly_counter() -> MonthlyJobCounter:
    client = get_redis()
    return RedisMonthlyJobCounter(client) if client is not None else LocalMonthlyJobCounter()
