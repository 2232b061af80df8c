"""The shared Redis client (cache, rate limits, invalidation), when one is configured."""

from __future__ import annotations

from functools import lru_cache

import redis

from celeriac.platform.settings import get_settings


@lru_cache(maxsize=1)
def get_redis() -> redis.Redis | None:
    """The process-wide client, or None in the embedded mode (no Redis configured)."""
    url = get_settings().redis_url
    if url is None:
        return None
    return redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
