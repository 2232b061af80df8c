"""Cache-aside entries in the cache Redis (``settings.redis_url``), shared by every process.

A reader asks :meth:`SharedCache.get_or_load` for an entry; on a miss it loads the value
from the source of truth (the blob store, the database) and puts it in Redis with a TTL.
Whoever changes the source deletes the entry afterwards (:meth:`SharedCache.invalidate`).
What is cached (docs/adr/0007-redis-cache-aside.md): the ciphertext of small blobs
(``celeriac.platform.storage.cached``), tenant profiles and the plugin registry. Keys name
the tenant, so deleting a tenant deletes all of its entries in one scan.

Plain cache-aside has a race: a reader loads the old value, a writer changes the source
and deletes the entry, then the reader stores the old value, stale for a whole TTL. So a
reader that misses takes a short **lease** in the same round trip as its ``GET``, and its
value is stored only if the lease is still there; an invalidation deletes the lease with
the entry, so a value loaded before a change is never stored after it. (Memcache's leases,
"Scaling Memcache at Facebook", NSDI 2013.) Two readers missing at once both load; only
the lease holder stores.

The cache never fails a caller: with no Redis configured it is off, and when Redis errors
the read goes to the source (reads stop trying Redis for ``RETRY_AFTER_SECONDS``;
invalidations always try). An invalidation that fails leaves the entry stale until its
TTL, the bound this layer gives.
"""

from __future__ import annotations

import json
import logging
import secrets
import threading
import time
from collections.abc import Callable
from functools import lru_cache
from typing import Any

import redis

from celeriac.platform import metrics
from celeriac.platform.redis_client import get_redis
from celeriac.platform.settings import CacheSettings, get_settings

logger = logging.getLogger(__name__)

PREFIX = "celeriac:cache:"
LEASE_SUFFIX = ":lease"
# Longer than any load should take (a blob read from S3); a lease left by a reader that
# died only stops others from filling the entry for this long.
LEASE_MILLISECONDS = 10_000
RETRY_AFTER_SECONDS = 5.0
_SCAN_BATCH = 500

# KEYS: entry, lease. ARGV: token, lease ms. -> {1, value} on a hit; {0, 1} when this
# reader got the lease; {0, 0} when another reader holds it.
_GET_OR_LEASE = """
local value = redis.call('GET', KEYS[1])
if value then return {1, value} end
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then return {0, 1} end
return {0, 0}
"""
# KEYS: entry, lease. ARGV: token, ttl ms (0: release the lease only), value.
# -> 1 when stored; 0 when the lease was lost (an invalidation since the load) or released.
_FILL = """
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[2])
if ARGV[2] == '0' then return 0 end
redis.call('SET', KEYS[1], ARGV[3], 'PX', ARGV[2])
return 1
"""


def blob_entry(blob_key: str) -> str:
    """The entry of a blob's stored bytes (``tenants/<tenant_id>/...``)."""
    return f"{PREFIX}blob:{blob_key}"


def tenant_entry(tenant_id: str, name: str) -> str:
    """An entry of the tenant's own (``name`` may contain ``/``)."""
    return f"{PREFIX}config:tenants/{tenant_id}/{name}"


def global_entry(name: str) -> str:
    """An entry that belongs to no tenant (the plugin registry)."""
    return f"{PREFIX}config:{name}"


def glob_escape(text: str) -> str:
    """``text`` matched literally in a Redis ``SCAN MATCH`` pattern."""
    return "".join(f"\\{c}" if c in "*?[]\\" else c for c in text)


def _milliseconds(seconds: float) -> int:
    return max(1, round(seconds * 1000))


class SharedCache:
    """Cache-aside over one Redis; ``client=None`` is the embedded mode: no cache, every
    read loads from the source."""

    def __init__(self, client: redis.Redis | None, settings: CacheSettings) -> None:
        self.client = client
        self.settings = settings
        self._lock = threading.Lock()
        self._resume_at = 0.0
        if client is not None:
            self._get_or_lease = client.register_script(_GET_OR_LEASE)
            self._fill = client.register_script(_FILL)

    @property
    def enabled(self) -> bool:
        return self.client is not None

    def get_or_load(
        self,
        key: str,
        load: Callable[[], bytes],
        *,
        ttl_seconds: float,
        max_bytes: int | None = None,
    ) -> bytes:
        """The cached value of ``key``, or ``load()``'s, stored for ``ttl_seconds`` unless
        it is longer than ``max_bytes``."""
        if not self._usable():
            return load()
        token = secrets.token_hex(8)
        lease = key + LEASE_SUFFIX
        try:
            hit, value = self._get_or_lease(keys=[key, lease], args=[token, LEASE_MILLISECONDS])
        except redis.RedisError as exc:
            self._pause(exc)
            return load()
        metrics.cache_looked_up(bool(hit))
        if hit:
            return bytes(value)
        loaded = load()  # an error here leaves the lease to expire: nothing to store
        if not value:
            return loaded  # another reader holds the lease and stores its own load
        keep = max_bytes is None or len(loaded) <= max_bytes
        ttl = _milliseconds(ttl_seconds) if keep else 0
        try:
            self._fill(keys=[key, lease], args=[token, ttl, loaded if keep else b""])
        except redis.RedisError as exc:  # e.g. OOM under noeviction: the value still serves
            self._pause(exc)
        return loaded

    def get_or_load_json(self, key: str, load: Callable[[], Any], *, ttl_seconds: float) -> Any:
        """:meth:`get_or_load` for a JSON-serialisable value."""
        raw = self.get_or_load(
            key,
            lambda: json.dumps(load(), separators=(",", ":")).encode(),
            ttl_seconds=ttl_seconds,
        )
        return json.loads(raw)

    def invalidate(self, *keys: str) -> None:
        """Delete entries (and their leases) after their source changed."""
        if self.client is None or not keys:
            return
        try:
            self.client.unlink(*keys, *(key + LEASE_SUFFIX for key in keys))
        except redis.RedisError:
            logger.warning(
                "cache invalidation failed; entries stay until their TTL",
                exc_info=True,
                extra={"entries": len(keys)},
            )

    def invalidate_matching(self, pattern: str) -> int:
        """Delete every entry (and lease) whose key matches the ``SCAN MATCH`` pattern;
        returns how many keys were deleted. O(keys in the cache db): for rare events."""
        if self.client is None:
            return 0
        removed = 0
        batch: list[bytes] = []
        try:
            for key in self.client.scan_iter(match=pattern, count=1000):
                batch.append(key)
                if len(batch) >= _SCAN_BATCH:
                    removed += int(self.client.unlink(*batch))
                    batch.clear()
            if batch:
                removed += int(self.client.unlink(*batch))
        except redis.RedisError:
            logger.warning(
                "cache invalidation failed; entries stay until their TTL",
                exc_info=True,
                extra={"pattern": pattern},
            )
        return removed

    def forget_tenant(self, tenant_id: str) -> int:
        """Delete every entry of the tenant: its blobs' bytes and its configuration."""
        tenant = glob_escape(f"tenants/{tenant_id}/")
        return self.invalidate_matching(f"{glob_escape(PREFIX)}*:{tenant}*")

    def _usable(self) -> bool:
        if self.client is None:
            return False
        with self._lock:
            return time.monotonic() >= self._resume_at

    def _pause(self, exc: redis.RedisError) -> None:
        with self._lock:
            self._resume_at = time.monotonic() + RETRY_AFTER_SECONDS
        logger.warning(
            "cache unavailable, reading from the source for %.0f s: %s", RETRY_AFTER_SECONDS, exc
        )


@lru_cache(maxsize=1)
def get_cache() -> SharedCache:
    """The process-wide cache: on the cache Redis, or off (no Redis, or disabled)."""
    settings = get_settings()
    client = get_redis() if settings.cache.enabled else None
    return SharedCache(client, settings.cache)
