"""Tenant blobs encrypted at rest: an :class:`Envelope` in front of any :class:`BlobStore`.

Each blob is encrypted with its key in the encryption context (``{"blob_key": key}``
beside the tenant id), so a ciphertext copied or moved to another key of the same tenant
does not decrypt there: one job's result cannot be served as another's. A tenant may only
use keys under its own ``tenants/<tenant_id>/`` prefix. Both directions stream, one
envelope segment at a time.

A job's blobs (every key under ``tenants/<t>/jobs/<j>/``) are encrypted under the job's
own data key when the job has one (:class:`JobKeys`, docs/adr/0015): the envelope names the
key by reference and the key is kept wrapped on the job's row, so destroying it there makes
every copy of the job's blobs undecryptable. A job without one (submitted before per-job
keys) keeps the tenant's data key, and its blobs (format 1) read as before.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Protocol

from celeriac.platform.crypto.envelope import Envelope, KeptKey, KeyResolver
from celeriac.platform.crypto.errors import DecryptionFailed
from celeriac.platform.storage.blobs import BlobStore, job_of_key, tenant_prefix, validate_key

BLOB_KEY_CONTEXT = "blob_key"
JOB_KEY_REFERENCE = "job:"


@dataclass(frozen=True, slots=True)
class NewJobKey:
    """A job's data key as it is made: the plaintext for its blobs, the wrapped form for
    its row."""

    job_id: str
    plaintext: bytes = field(repr=False)  # never in logs or tracebacks
    wrapped: bytes


class JobKeys(Protocol):
    """Where the per-job data keys are kept (the job rows; ``celeriac.platform.jobs.data_keys``)."""

    def create(self, tenant_id: str, job_id: str) -> NewJobKey:
        """A new data key for a job about to be stored (its row does not exist yet)."""
        ...

    def find(self, tenant_id: str, job_id: str) -> bytes | None:
        """The job's data key; None for a job that has none (written before per-job keys);
        :class:`KeyUnavailable` once it was destroyed (its data deleted) or the job is
        unknown."""
        ...

    def forget(self, tenant_id: str, job_id: str) -> None:
        """Drop this process's copy of the job's key (after its data was deleted)."""
        ...

    def forget_tenant(self, tenant_id: str) -> None:
        """Drop this process's copies of the tenant's job keys (its key was destroyed)."""
        ...


class EncryptedBlobStore:
    """Encrypts on put and decrypts on get/stream, for one tenant per call."""

    def __init__(
        self, store: BlobStore, envelope: Envelope, job_keys: JobKeys | None = None
    ) -> None:
        self.store = store
        self.envelope = envelope
        self.job_keys = job_keys

    def new_job_key(self, tenant_id: str, job_id: str) -> NewJobKey | None:
        """A data key for a new job: pass it to :meth:`put` for the blobs written before
        the job's row exists, and store ``.wrapped`` on the row (None: no per-job keys)."""
        if self.job_keys is None:
            return None
        return self.job_keys.create(tenant_id, job_id)

    def forget_job_key(self, tenant_id: str, job_id: str) -> None:
        """This process forgets the job's key (its data, and the row's copy, are gone)."""
        if self.job_keys is not None:
            self.job_keys.forget(tenant_id, job_id)

    def forget_tenant_job_keys(self, tenant_id: str) -> None:
        """This process forgets every job key of the tenant (its key was destroyed)."""
        if self.job_keys is not None:
            self.job_keys.forget_tenant(tenant_id)

    def put(
        self,
        tenant_id: str,
        key: str,
        data: bytes | Iterable[bytes],
        *,
        job_key: NewJobKey | None = None,
    ) -> int:
        """Encrypt and store ``data``; returns the ciphertext bytes written. A job's blob
        is encrypted under ``job_key`` (a job not stored yet), else under its job's key
        when the job has one, else under the tenant's data key."""
        context = self._context(tenant_id, key)
        kept = self._kept_key(tenant_id, key, job_key)
        if isinstance(data, bytes | bytearray | memoryview):
            sealed = self.envelope.encrypt(tenant_id, bytes(data), context, key=kept)
            return self.store.put(key, sealed)
        return self.store.put(key, self.envelope.encrypt_stream(tenant_id, data, context, key=kept))

    def get(self, tenant_id: str, key: str) -> bytes:
        """The decrypted blob."""
        context = self._context(tenant_id, key)
        return self.envelope.decrypt(
            tenant_id, self.store.get(key), context, resolve=self._resolver(tenant_id, key)
        )

    def stream(self, tenant_id: str, key: str) -> Iterator[bytes]:
        """The decrypted blob, one authenticated segment at a time.

        A missing blob raises :class:`BlobNotFound` here; a tampered or truncated one
        raises from the iteration, possibly after earlier segments were yielded.
        """
        context = self._context(tenant_id, key)
        return self._decrypted(tenant_id, key, self.store.stream(key), context)

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
        self, tenant_id: str, key: str, chunks: Iterator[bytes], context: dict[str, str]
    ) -> Iterator[bytes]:
        try:
            resolve = self._resolver(tenant_id, key)
            yield from self.envelope.decrypt_stream(tenant_id, chunks, context, resolve=resolve)
        finally:
            close = getattr(chunks, "close", None)
            if callable(close):  # release the file or connection on early exit
                close()

    def _kept_key(self, tenant_id: str, key: str, new: NewJobKey | None) -> KeptKey | None:
        """The job's key for a job's blob, when the job has one."""
        job_id = job_of_key(tenant_id, key)
        if new is not None:
            if new.job_id != job_id:
                raise ValueError(f"blob key {key!r} is not job {new.job_id}'s")
            return KeptKey(JOB_KEY_REFERENCE + new.job_id, new.plaintext)
        if self.job_keys is None or job_id is None:
            return None
        plaintext = self.job_keys.find(tenant_id, job_id)
        return None if plaintext is None else KeptKey(JOB_KEY_REFERENCE + job_id, plaintext)

    def _resolver(self, tenant_id: str, key: str) -> KeyResolver:
        """Resolves the one reference a blob under this key may carry: its own job's key
        (a blob moved under another job's key does not get that job's key)."""
        job_id = job_of_key(tenant_id, key)

        def resolve(reference: str) -> bytes:
            if job_id is None or reference != JOB_KEY_REFERENCE + job_id:
                raise DecryptionFailed(f"blob {key!r} names another object's key ({reference})")
            plaintext = None if self.job_keys is None else self.job_keys.find(tenant_id, job_id)
            if plaintext is None:
                raise DecryptionFailed(f"blob {key!r} names a job key that job {job_id} lacks")
            return plaintext

        return resolve

    @staticmethod
    def _context(tenant_id: str, key: str) -> dict[str, str]:
        if not validate_key(key).startswith(tenant_prefix(tenant_id)):
            raise ValueError(f"blob key {key!r} is outside tenant {tenant_id!r}'s prefix")
        return {BLOB_KEY_CONTEXT: key}


class ClearBlobStoreForBenchmarks(EncryptedBlobStore):
    """BENCHMARKS ONLY: the same interface and tenant-prefix checks, no encryption.

    Built only when ``keys.encryption`` is false, which the settings refuse outside
    ``CELERIAC_ENVIRONMENT=benchmark``; it measures what encryption costs a job.
    """

    def put(
        self,
        tenant_id: str,
        key: str,
        data: bytes | Iterable[bytes],
        *,
        job_key: NewJobKey | None = None,  # noqa: ARG002 (the encrypting store's signature)
    ) -> int:
        """Store ``data`` as it is."""
        self._context(tenant_id, key)
        return self.store.put(key, data)

    def get(self, tenant_id: str, key: str) -> bytes:
        """The stored bytes."""
        self._context(tenant_id, key)
        return self.store.get(key)

    def stream(self, tenant_id: str, key: str) -> Iterator[bytes]:
        """The stored bytes in chunks."""
        self._context(tenant_id, key)
        return self.store.stream(key)
