"""Per-job data keys, kept wrapped on the job's row (docs/adr/0015).

Every blob of a job is encrypted under a data key of the job's own. The key is 32 random
bytes, wrapped as an envelope under the tenant's data key (so under the tenant's KMS key,
with the tenant id and the job id in its encryption context) and stored in
``jobs.data_key``; the blobs' envelopes name it by reference only (format 2). Deleting the
job's data nulls the column, after which no copy of the job's blobs (an S3 object version,
a backup of the bucket, a stale cache entry) can be decrypted by the platform: the wrapped
key is gone and the tenant's key never wrapped anything the copies carry.

Plaintext job keys stay in the memory of the processes that use them, for at most the data
key cache's TTL (``keys.data_key_cache_ttl_seconds``), as the tenant data keys do (ADR
0008): a worker reads a job's row once per TTL, not once per blob.
"""

from __future__ import annotations

import secrets
import threading
import time
import uuid
from collections.abc import Callable

from cachetools import TTLCache

from celeriac.platform.crypto.envelope import Envelope
from celeriac.platform.crypto.errors import KeyUnavailable
from celeriac.platform.crypto.keys import DATA_KEY_BYTES
from celeriac.platform.db import get_engine
from celeriac.platform.jobs import repository
from celeriac.platform.storage.encrypted import NewJobKey

JOB_CONTEXT_KEY = "job_id"


class _NoKey:
    """A job submitted before per-job keys: its blobs are under the tenant's data key."""


_NO_KEY = _NoKey()


class JobDataKeys:
    """The :class:`~celeriac.platform.storage.encrypted.JobKeys` of the job rows."""

    def __init__(
        self,
        envelope: Envelope,
        *,
        cache_size: int = 1024,
        cache_ttl_seconds: float = 300,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.envelope = envelope
        self._lock = threading.Lock()
        self._caching = cache_size > 0 and cache_ttl_seconds > 0
        self._cache: TTLCache[tuple[str, str], bytes | _NoKey] = TTLCache(
            cache_size, cache_ttl_seconds, timer=clock
        )

    def create(self, tenant_id: str, job_id: str) -> NewJobKey:
        """A random key for a new job, wrapped under the tenant's key for its row."""
        plaintext = secrets.token_bytes(DATA_KEY_BYTES)
        wrapped = self.envelope.encrypt(tenant_id, plaintext, {JOB_CONTEXT_KEY: job_id})
        self._remember(tenant_id, job_id, plaintext)
        return NewJobKey(job_id=job_id, plaintext=plaintext, wrapped=wrapped)

    def find(self, tenant_id: str, job_id: str) -> bytes | None:
        """The job's key from this process's cache or the job's row (one read per TTL)."""
        with self._lock:
            cached = self._cache.get((tenant_id, job_id))
        if cached is not None:
            return None if isinstance(cached, _NoKey) else cached
        try:
            tenant_uuid, job_uuid = uuid.UUID(tenant_id), uuid.UUID(job_id)
        except ValueError:
            return None  # not a job row's ids (the platform's are UUIDs): no job key
        with get_engine().connect() as conn:
            row = repository.job_data_key(conn, tenant_uuid, job_uuid)
        if row is None:
            raise KeyUnavailable(f"job {job_id} does not exist: its blobs have no key")
        if row.data_key is None:
            if row.data_deleted_at is not None:
                raise KeyUnavailable(
                    f"job {job_id}'s data was deleted on {row.data_deleted_at:%Y-%m-%d}: "
                    "its data key was destroyed with it (crypto-shredded)"
                )
            self._remember(tenant_id, job_id, _NO_KEY)
            return None
        # Unwrapped with the tenant the caller asked for and the job's id: a row holding
        # another tenant's or another job's wrapped key does not unwrap.
        plaintext = self.envelope.decrypt(tenant_id, row.data_key, {JOB_CONTEXT_KEY: job_id})
        if len(plaintext) != DATA_KEY_BYTES:
            raise KeyUnavailable(f"job {job_id}'s data key has the wrong length")
        self._remember(tenant_id, job_id, plaintext)
        return plaintext

    def forget(self, tenant_id: str, job_id: str) -> None:
        """Drop this process's copy (other processes keep theirs until the TTL ends)."""
        with self._lock:
            self._cache.pop((tenant_id, job_id), None)

    def forget_tenant(self, tenant_id: str) -> None:
        """Drop this process's copies of the tenant's job keys (its key was destroyed)."""
        with self._lock:
            for cached in [k for k in self._cache if k[0] == tenant_id]:
                self._cache.pop(cached, None)

    def _remember(self, tenant_id: str, job_id: str, value: bytes | _NoKey) -> None:
        if self._caching:
            with self._lock:
                self._cache[tenant_id, job_id] = value
