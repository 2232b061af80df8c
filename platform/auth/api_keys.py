"""Authenticating tenant API keys on the hot path.

A key is checked in this order, cheapest first: shape and checksum (no I/O), then an
in-process cache keyed by the key's digest, then one database query. The cache is
dropped whenever the shared generation moves (revocation, suspension, deletion), so a
revoked key stops working on every process within one poll interval (<= 5 s).
``last_used_at`` is written at most once per ``LAST_USED_RESOLUTION`` per key and process.
"""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from cachetools import TTLCache
from sqlalchemy import Engine, select, update

from celeriac.platform.auth.context import TenantContext
from celeriac.platform.auth.invalidation import Generation
from celeriac.platform.errors import TenantSuspended, Unauthorized
from celeriac.platform.keys.tokens import key_digest, parse_key
from celeriac.platform.models import ApiKey, Tenant, TenantStatus, utcnow

LAST_USED_RESOLUTION = timedelta(minutes=5)
# Bounds staleness for what does not bump the generation (a key passing its expiry is
# checked on every request from the cached expires_at, so this is only a memory bound).
CACHE_TTL_SECONDS = 300
CACHE_SIZE = 10_000


@dataclass(frozen=True)
class _KeyRecord:
    key_id: uuid.UUID
    tenant_id: uuid.UUID
    tenant_slug: str
    tenant_status: TenantStatus
    scopes: frozenset[str]
    expires_at: datetime | None
    revoked_at: datetime | None
    last_used_at: datetime | None


class ApiKeyAuthenticator:
    def __init__(
        self, engine: Engine, pepper: bytes, generation: Generation, poll_seconds: float
    ) -> None:
        self.engine = engine
        self.pepper = pepper
        self.generation = generation
        self.poll_seconds = poll_seconds
        self._cache: TTLCache[str, _KeyRecord] = TTLCache(CACHE_SIZE, CACHE_TTL_SECONDS)
        self._lock = threading.Lock()
        self._seen_generation = generation.current()
        self._checked_at = time.monotonic()

    def authenticate(self, presented: str, *, allow_suspended: bool = False) -> TenantContext:
        """The tenant context of a valid key, or 401 / 403. May query the database.

        ``allow_suspended``: a suspended tenant's key gives a context marked ``suspended``
        instead of a 403 (the API lets it read; :class:`Authenticator` refuses its writes).
        """
        if parse_key(presented) is None:
            raise Unauthorized("the API key is malformed")
        return self.authenticate_digest(
            key_digest(self.pepper, presented), allow_suspended=allow_suspended
        )

    def authenticate_digest(self, digest: str, *, allow_suspended: bool = False) -> TenantContext:
        """:meth:`authenticate` from the key's digest: what a console session keeps instead
        of the key, so that revoking the key or suspending the tenant ends the session within
        the same poll interval as it stops the key (the console never passes
        ``allow_suspended``). May query the database."""
        self._drop_cache_if_invalidated()
        with self._lock:
            record = self._cache.get(digest)
        if record is None:
            record = self._load(digest)
            with self._lock:
                self._cache[digest] = record
        now = utcnow()
        context = self._context(record, now, allow_suspended)
        if _touch_due(record, now):
            self._touch(digest, record, now)
        return context

    def authenticate_cached(
        self, presented: str, *, allow_suspended: bool = False
    ) -> TenantContext | None:
        """:meth:`authenticate` when it needs no I/O (the key is cached, the generation was
        polled recently, ``last_used_at`` is fresh), else None: the event loop calls this
        first and leaves the thread pool to the rare request that needs the database."""
        if parse_key(presented) is None:
            raise Unauthorized("the API key is malformed")
        if time.monotonic() - self._checked_at >= self.poll_seconds:
            return None
        digest = key_digest(self.pepper, presented)
        with self._lock:
            record = self._cache.get(digest)
        now = utcnow()
        if record is None or _touch_due(record, now):
            return None
        return self._context(record, now, allow_suspended)

    @staticmethod
    def _context(record: _KeyRecord, now: datetime, allow_suspended: bool) -> TenantContext:
        if record.revoked_at is not None and record.revoked_at <= now:
            raise Unauthorized("the API key has been revoked")
        if record.expires_at is not None and record.expires_at <= now:
            raise Unauthorized("the API key has expired")
        if record.tenant_status is TenantStatus.DELETED:
            raise Unauthorized("the API key's tenant has been deleted")
        suspended = record.tenant_status is TenantStatus.SUSPENDED
        if suspended and not allow_suspended:
            raise TenantSuspended("the tenant is suspended; contact your administrator")
        return TenantContext(
            tenant_id=record.tenant_id,
            tenant_slug=record.tenant_slug,
            key_id=record.key_id,
            scopes=record.scopes,
            suspended=suspended,
        )

    def invalidate(self) -> None:
        """Bump the shared generation and drop this process's cache at once."""
        self.generation.bump()
        with self._lock:
            self._cache.clear()

    def _drop_cache_if_invalidated(self) -> None:
        if time.monotonic() - self._checked_at < self.poll_seconds:
            return
        current = self.generation.current()
        with self._lock:
            self._checked_at = time.monotonic()
            if current != self._seen_generation:
                self._seen_generation = current
                self._cache.clear()

    def _load(self, digest: str) -> _KeyRecord:
        query = (
            select(
                ApiKey.id,
                ApiKey.tenant_id,
                ApiKey.scopes,
                ApiKey.expires_at,
                ApiKey.revoked_at,
                ApiKey.last_used_at,
                Tenant.slug,
                Tenant.status,
            )
            .join(Tenant, Tenant.id == ApiKey.tenant_id)
            .where(ApiKey.digest == digest)
        )
        with self.engine.connect() as conn:
            row = conn.execute(query).one_or_none()
        if row is None:
            raise Unauthorized("the API key is not valid")
        return _KeyRecord(
            key_id=row.id,
            tenant_id=row.tenant_id,
            tenant_slug=row.slug,
            tenant_status=TenantStatus(row.status),
            scopes=frozenset(row.scopes),
            expires_at=row.expires_at,
            revoked_at=row.revoked_at,
            last_used_at=row.last_used_at,
        )

    def _touch(self, digest: str, record: _KeyRecord, now: datetime) -> None:
        with self._lock:
            self._cache[digest] = replace(record, last_used_at=now)
        with self.engine.begin() as conn:
            conn.execute(update(ApiKey).where(ApiKey.id == record.key_id).values(last_used_at=now))


def _touch_due(record: _KeyRecord, now: datetime) -> bool:
    return record.last_used_at is None or now - record.last_used_at > LAST_USED_RESOLUTION
