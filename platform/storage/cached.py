"""Hot blobs kept in the shared cache: a :class:`BlobStore` in front of another.

It sits *below* :class:`~celeriac.platform.storage.EncryptedBlobStore`, so what it caches
is what the store holds: envelope ciphertext, never tenant plaintext. A cached copy is
authenticated like the stored one when it is decrypted (its blob key is bound into the
envelope), so an entry altered in Redis, or moved to another key, fails to decrypt
instead of serving something else.

Only whole-blob reads (``get``) are cached, and only blobs of at most ``max_entry_bytes``:
a job's payload chunks and dataset partials, each read by several tasks. ``stream`` is
for large objects and always reads the store. Every write or delete deletes the entry
after the store changed (also when it failed, since the store may have changed anyway).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from celeriac.platform.cache import SharedCache, blob_entry, glob_escape
from celeriac.platform.storage.blobs import BlobStore, validate_key, validate_prefix


class CachedBlobStore:
    """:class:`BlobStore` whose small blobs are read through the shared cache."""

    def __init__(
        self, store: BlobStore, cache: SharedCache, *, max_entry_bytes: int, ttl_seconds: float
    ) -> None:
        self.store = store
        self.cache = cache
        self.max_entry_bytes = max_entry_bytes
        self.ttl_seconds = ttl_seconds

    def put(self, key: str, data: bytes | Iterable[bytes]) -> int:
        """Store the blob, then drop its cached copy."""
        entry = blob_entry(validate_key(key))
        try:
            return self.store.put(key, data)
        finally:
            self.cache.invalidate(entry)

    def get(self, key: str) -> bytes:
        """The blob, from the cache when a copy is there (else stored there on the way)."""
        return self.cache.get_or_load(
            blob_entry(validate_key(key)),
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
        entry = blob_entry(validate_key(key))
        try:
            self.store.delete(key)
        finally:
            self.cache.invalidate(entry)

    def delete_prefix(self, prefix: str) -> int:
        """Remove every blob under ``prefix`` and their cached copies."""
        pattern = glob_escape(blob_entry(validate_prefix(prefix))) + "*"
        try:
            return self.store.delete_prefix(prefix)
        finally:
            self.cache.invalidate_matching(pattern)

    def size(self, key: str) -> int:
        return self.store.size(key)
