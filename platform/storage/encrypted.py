"""Tenant blobs encrypted at rest: an :class:`Envelope` in front of any :class:`BlobStore`.

Each blob is encrypted with its key in the encryption context (``{"blob_key": key}``
beside the tenant id), so a ciphertext copied or moved to another key of the same tenant
does not decrypt there: one job's result cannot be served as another's. A tenant may only
use keys under its own ``tenants/<tenant_id>/`` prefix. Both directions stream, one
envelope segment at a time.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from celeriac.platform.crypto.envelope import Envelope
from celeriac.platform.storage.blobs import BlobStore, tenant_prefix, validate_key

BLOB_KEY_CONTEXT = "blob_key"


class EncryptedBlobStore:
    """Encrypts on put and decrypts on get/stream, for one tenant per call."""

    def __init__(self, store: BlobStore, envelope: Envelope) -> None:
        self.store = store
        self.envelope = envelope

    def put(self, tenant_id: str, key: str, data: bytes | Iterable[bytes]) -> int:
        """Encrypt and store ``data``; returns the ciphertext bytes written."""
        context = self._context(tenant_id, key)
        if isinstance(data, bytes | bytearray | memoryview):
            return self.store.put(key, self.envelope.encrypt(tenant_id, bytes(data), context))
        return self.store.put(key, self.envelope.encrypt_stream(tenant_id, data, context))

    def get(self, tenant_id: str, key: str) -> bytes:
        """The decrypted blob."""
        context = self._context(tenant_id, key)
        return self.envelope.decrypt(tenant_id, self.store.get(key), context)

    def stream(self, tenant_id: str, key: str) -> Iterator[bytes]:
        """The decrypted blob, one authenticated segment at a time.

        A missing blob raises :class:`BlobNotFound` here; a tampered or truncated one
        raises from the iteration, possibly after earlier segments were yielded.
        """
        context = self._context(tenant_id, key)
        return self._decrypted(tenant_id, self.store.stream(key), context)

    def exists(self, tenant_id: str, key: str) -> bool:
        """Whether the tenant's blob exists."""
        self._context(tenant_id, key)
        return self.store.exists(key)

    def delete(self, tenant_id: str, key: str) -> None:
        """Remove the tenant's blob."""
        self._context(tenant_id, key)
        self.store.delete(key)

    def delete_tenant(self, tenant_id: str) -> int:
        """Remove every blob of the tenant; returns how many."""
        return self.store.delete_prefix(tenant_prefix(tenant_id))

    def _decrypted(
        self, tenant_id: str, chunks: Iterator[bytes], context: dict[str, str]
    ) -> Iterator[bytes]:
        try:
            yield from self.envelope.decrypt_stream(tenant_id, chunks, context)
        finally:
            close = getattr(chunks, "close", None)
            if callable(close):  # release the file or connection on early exit
                close()

    @staticmethod
    def _context(tenant_id: str, key: str) -> dict[str, str]:
        if not validate_key(key).startswith(tenant_prefix(tenant_id)):
            raise ValueError(f"blob key {key!r} is outside tenant {tenant_id!r}'s prefix")
        return {BLOB_KEY_CONTEXT: key}
