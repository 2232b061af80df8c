"""Hot blobs kept in the shared cache: a :class:`BlobStore` in front of another.

It sits *below* :class:`~celeriac.platform.storage.EncryptedBlobStore`, so what it caches
is what the store holds: envelope ciphertext, never tenant plaintext. A cached copy is
authenticated like the stored one when it is decrypted (its blob key is bound into the
envelope), so an entry altered in Redis, or moved to another key, fails to decrypt
instead of serving something else.

Only the blobs ``cacheable`` accepts are cached (for tenant data: :func:`hot_job_blob`, a
job's payload chunks and dataset partials, each read by several tasks), only whole-blob
reads (``get``; ``stream`` is for large objects and always reads the store), and only
blobs of at most ``max_entry_bytes``. Every write or delete of a cacheable blob deletes its
entry after the store changed (also when it failed: the store may have changed anyway).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator

from celeriac.platform.cache import SharedCache, blob_entry, glob_escape
from celeriac.platform.storage.blobs import BlobStore, validate_key, validate_prefix

# Read by several tasks of a job: its payload chunks (by every dataset generator) and its
# dataset partials (by every analyzer that accepts the dataset). Analysis outputs and the
# result document are read once (by finalize, by the API).
_HOT_JOB_BLOB = re.compile(r"tenants/[^/]+/jobs/[^/]+/(?:payload|datasets)/")


def hot_job_blob(key: str) -> bool:
    """Whether ``key`` is a blob that several tasks of its job read."""
    return _HOT_JOB_BLOB.match(key) is not None


class CachedBlobStore:
    """:class:`BlobStore` whose small, cacheable blobs are read through the shared cache."""

    def __init__(
        self,
        store: BlobStore,
        cache: SharedCache,
        *,
        max_entry_bytes: int,
        ttl_seconds: float,
        cacheable: Callable[[str], bool] = lambda _key: True,
    ) -> None:
        self.store = store
        self.cache = cache
        self.max_entry_bytes = max_entry_bytes
        self.ttl_seconds = ttl_seconds
        self.cacheable = cacheable

    def put(self, key: str, data: bytes | Iterable[bytes]) -> int:
        """Store the blob, then drop its cached copy."""
        if not self.cacheable(validate_key(key)):
            return self.store.put(key, data)
        try:
            return self.store.put(key, data)
        finally:
            self.cache.invalidate(blob_entry(key))

    def get(self, key: str) -> bytes:
        """The blob, from the cache when a copy is there (else stored there on the way)."""
        if not self.cacheable(validate_key(key)):
            return self.store.get(key)
        return self.cache.get_or_load(
            blob_entry(key),
            lambda: self.store.get(key),
            ttl_seconds=self.ttl_seconds,
            max_bytes=self.max_entry_bytes,
        )

    def stream(self, key: str) -> Iterator[bytes]:
        """The blob in chunks, from the store (streams are for large blobs)."""
        return self.store.stream(key)

    def exists(self, key: str) -> bool:
        return self.store.exists(key)

    def delete(self, key: str) -> None:
        """Remove the blob and its cached copy."""
        if not self.cacheable(validate_key(key)):
            self.store.delete(key)
            return
        try:
            self.store.delete(key)
        finally:
            self.cache.invalidate(blob_entry(key))

    def delete_prefix(self, prefix: str) -> int:
        """Remove every blob under ``prefix`` and their cached copies."""
        pattern = glob_escape(blob_entry(validate_prefix(prefix))) + "*"
        try:
            return self.store.delete_prefix(prefix)
        finally:
            self.cache.invalidate_matching(pattern)

    def size(self, key: str) -> int:
        return self.store.size(key)
