"""Blob storage for payloads, datasets and results: a local directory now, S3 later,
with tenant encryption composed on top."""

from __future__ import annotations

from typing import TYPE_CHECKING

from celeriac.platform.storage.blobs import (
    BlobNotFound,
    BlobStore,
    job_blob_key,
    tenant_prefix,
    validate_key,
    validate_prefix,
)
from celeriac.platform.storage.cached import CachedBlobStore, hot_job_blob
from celeriac.platform.storage.encrypted import EncryptedBlobStore
from celeriac.platform.storage.local import LocalBlobStore

if TYPE_CHECKING:
    from celeriac.platform.settings import Settings

__all__ = [
    "BlobNotFound",
    "BlobStore",
    "CachedBlobStore",
    "EncryptedBlobStore",
    "LocalBlobStore",
    "blob_store_from_settings",
    "hot_job_blob",
    "job_blob_key",
    "tenant_prefix",
    "validate_key",
    "validate_prefix",
]


def blob_store_from_settings(settings: Settings) -> BlobStore:
    """The blob store that ``settings.blob`` selects."""
    if settings.blob.backend == "s3":
        raise NotImplementedError(
            "CELERIAC_BLOB__BACKEND=s3: the S3 blob store comes with the KMS/S3 issue; "
            "use 'local' until then"
        )
    return LocalBlobStore(settings.blob.local_dir)
