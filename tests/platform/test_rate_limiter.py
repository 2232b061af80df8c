"""The rate limiter against the test Redis, without the API: concurrent requests of one
process go out in batches and are admitted exactly up to the burst; the monthly reservation
rides along; an unreachable Redis admits (fail open)."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import redis

from celeriac.platform.quotas.plans import PLANS
from celeriac.platform.quotas.ratelimit import (
    MONTHLY_REFUSED,
    MONTHLY_RESERVED,
    MONTHLY_UNSEEDED,
    MonthlyAsk,
    RateDecision,
    RedisRateLimiter,
)
from celeriac.platform.settings import Settings

from support import free_port


def test_concurrent_requests_are_batched_and_admitted_up_to_the_burst(
    api_settings: Settings,
) -> None:
    limiter = RedisRateLimiter(str(api_settings.redis_url))
    limits = PLANS["free"].__class__(
        **(PLANS["free"].as_dict() | {"requests_per_second": 1, "request_burst": 30})
    )
    tenant = uuid.uuid4()
    calls = 0

    script = limiter._sender.script

    def counted(**kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        return script(**kwargs)

    limiter._sender.script = counted

    async def run() -> tuple[list[RateDecision | None], float]:
        began = time.monotonic()
        answers = await asyncio.gather(*(limiter.hit(tenant, limits) for _ in range(100)))
        return list(answers), time.monotonic() - began

    answers, elapsed = asyncio.run(run())
    admitted = [a for a in answers if a is not None and a.admitted]
    assert 30 <= len(admitted) <= 30 + int(elapsed) + 1
    assert calls < 100  # batched: fewer calls than requests
    assert sorted(a.status.remaining for a in admitted)[:3] == [0, 1, 2]
    refused = [a for a in answers if a is not None and not a.admitted]
    assert refused
    assert all(a.retry_after > 0 for a in refused)


def test_the_monthly_reservation_rides_along(api_settings: Settings) -> None:
    limiter = RedisRateLimiter(str(api_settings.redis_url))
    limits = PLANS["free"]
    tenant = uuid.uuid4()
    key = f"celeriac:jobs:{tenant}:test"
    ask = MonthlyAsk(key, 2)

    async def hits(count: int) -> list[RateDecision | None]:
        return [await limiter.hit(tenant, limits, ask) for _ in range(count)]

    (unseeded,) = asyncio.run(hits(1))
    assert unseeded is not None
    assert unseeded.monthly == (MONTHLY_UNSEEDED, 0)
    redis.Redis.from_url(str(api_settings.redis_url)).set(key, 1)
    states = [d.monthly for d in asyncio.run(hits(2)) if d is not None]
    assert states == [(MONTHLY_RESERVED, 2), (MONTHLY_REFUSED, 2)]
    assert asyncio.run(limiter.hit(tenant, limits)).monthly is None  # type: ignore[union-attr]


def test_an_unreachable_redis_admits(api_settings: Settings) -> None:
    limiter = RedisRateLimiter(f"redis://127.0.0.1:{free_port()}/0")
    assert asyncio.run(limiter.hit(uuid.uuid4(), PLANS["free"])) is None
