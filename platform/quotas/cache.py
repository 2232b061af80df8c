"""Each API process's copy of tenants' limits, dropped when an admin changes one.

Same pattern as the API-key cache (docs/adr/0004): a change bumps a shared generation
counter (Redis ``INCR celeriac:quotas:generation``, or a file's mtime in the embedded mode);
every process reads it at most every ``api.quota_cache_poll_seconds`` (<= 5 s) and drops
its copy when it moved, and the process that made the change drops its own at once. A
request whose tenant's limits are cached and whose poll is not due reads them with no I/O.
"""

from __future__ import annotations

import threading
import time
import uuid
from functools import lru_cache

from cachetools import TTLCache
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from celeriac.platform.auth.invalidation import FileGeneration, Generation, RedisGeneration
from celeriac.platform.db import get_engine
from celeriac.platform.quotas.plans import Limits, tenant_limits
from celeriac.platform.redis_client import get_redis
from celeriac.platform.settings import get_settings

GENERATION_KEY = "celeriac:quotas:generation"
# A memory bound; staleness is bounded by the generation poll, not by this.
CACHE_TTL_SECONDS = 3600
CACHE_SIZE = 100_000


class QuotaCache:
    def __init__(self, engine: Engine, generation: Generation, poll_seconds: float) -> None:
        self.engine = engine
        self.generation = generation
        self.poll_seconds = poll_seconds
        self._cache: TTLCache[uuid.UUID, Limits] = TTLCache(CACHE_SIZE, CACHE_TTL_SECONDS)
        self._lock = threading.Lock()
        self._seen = generation.current()
        self._checked_at = time.monotonic()

    def cached(self, tenant_id: uuid.UUID) -> Limits | None:
        """The tenant's limits when that needs no I/O, else None (call :meth:`get`)."""
        if time.monotonic() - self._checked_at >= self.poll_seconds:
            return None
        with self._lock:
            return self._cache.get(tenant_id)

    def get(self, tenant_id: uuid.UUID) -> Limits:
        """The tenant's limits; may poll the generation and query the database."""
        self._drop_if_invalidated()
        with self._lock:
            limits = self._cache.get(tenant_id)
        if limits is None:
            with Session(self.engine) as session:
                limits = tenant_limits(session, tenant_id)
            with self._lock:
                self._cache[tenant_id] = limits
        return limits

    def invalidate(self) -> None:
        """After a change of a tenant's quotas or plan: every process drops its copy (this
        one now, the others within one poll interval)."""
        self.generation.bump()
        with self._lock:
            self._cache.clear()

    def _drop_if_invalidated(self) -> None:
        if time.monotonic() - self._checked_at < self.poll_seconds:
            return
        current = self.generation.current()
        with self._lock:
            self._checked_at = time.monotonic()
            if current != self._seen:
                self._seen = current
                self._cache.clear()


def quota_generation() -> Generation:
    client = get_redis()
    if client is not None:
        return RedisGeneration(client, GENERATION_KEY)
    return FileGeneration(get_settings().var_dir / "quota-generation")


@lru_cache(maxsize=1)
def quota_cache() -> QuotaCache:
    """The process's quota cache."""
    return QuotaCache(get_engine(), quota_generation(), get_settings().api.quota_cache_poll_seconds)


def invalidate_quotas() -> None:
    """Tell every process that some tenant's limits changed (call after the commit)."""
    quota_cache().invalidate()
