"""BENCHMARKS ONLY: tenant blobs stored unencrypted, to measure what encryption costs a job
(bench.crypto). Never part of the product: a process gets it only from a bench, the workers
with ``--include bench.clear_blobs`` and the API as ``python -m bench.clear_blobs api ...``
(this module's ``main`` is the ``celeriac`` command line, after the patch).

Importing it replaces :class:`EncryptedBlobStore`'s data methods with ones that keep its
interface and its tenant-prefix checks and store the bytes as they are; a monkeypatch, on
purpose, so that the product carries no switch that turns encryption off. Run it with the
shared blob cache off (``CELERIAC_CACHE__BLOBS=off``): the cache would hold plaintext.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator

from celeriac.platform.cli import main as celeriac
from celeriac.platform.storage.encrypted import EncryptedBlobStore

logger = logging.getLogger(__name__)


def _put(
    self: EncryptedBlobStore,
    tenant_id: str,
    key: str,
    data: bytes | Iterable[bytes],
    *,
    job_key: object = None,  # noqa: ARG001 - EncryptedBlobStore.put's signature
) -> int:
    """Store ``data`` as it is (``job_key``: the encrypting store's per-job key, unused)."""
    self._context(tenant_id, key)
    return self.store.put(key, data)


def _get(self: EncryptedBlobStore, tenant_id: str, key: str) -> bytes:
    """The stored bytes."""
    self._context(tenant_id, key)
    return self.store.get(key)


def _stream(self: EncryptedBlobStore, tenant_id: str, key: str) -> Iterator[bytes]:
    """The stored bytes in chunks."""
    self._context(tenant_id, key)
    return self.store.stream(key)


EncryptedBlobStore.put = _put  # type: ignore[method-assign]
EncryptedBlobStore.get = _get  # type: ignore[method-assign]
EncryptedBlobStore.stream = _stream  # type: ignore[method-assign]
logger.warning("tenant blobs are stored UNENCRYPTED (bench.clear_blobs)")


def main() -> None:
    celeriac()


if __name__ == "__main__":
    main()
