"""Blob storage for payloads, datasets and results: a local directory (embedded mode) or
S3, with tenant encryption composed on top."""

from __future__ import annotations

from typing import TYPE_CHECKING

from celeriac.platform.crypto.keys import key_provider_from_settings
from celeriac.platform.storage.blobs import (
    BlobNotFound,
    BlobStore,
    job_blob_key,
    job_of_key,
    tenant_prefix,
    validate_key,
    validate_prefix,
)
from celeriac.platform.storage.cached import CachedBlobStore, hot_job_blob
from celeriac.platform.storage.encrypted import (
    ClearBlobStoreForBenchmarks,
    EncryptedBlobStore,
    JobKeys,
    NewJobKey,
)
from celeriac.platform.storage.local import LocalBlobStore

if TYPE_CHECKING:
    from celeriac.platform.crypto.keys import KeyProvider
    from celeriac.platform.settings import Settings

__all__ = [
    "BlobNotFound",
    "BlobStore",
    "CachedBlobStore",
    "ClearBlobStoreForBenchmarks",
    "EncryptedBlobStore",
    "JobKeys",
    "LocalBlobStore",
    "NewJobKey",
    "blob_store_from_settings",
    "hot_job_blob",
    "job_blob_key",
    "job_of_key",
    "tenant_prefix",
    "validate_key",
    "validate_prefix",
]


def blob_store_from_settings(
    settings: Settings, key_provider: KeyProvider | None = None
) -> BlobStore:
    """The blob store that ``settings.blob`` selects; ``key_provider`` names the tenant
    keys for SSE-KMS when ``blob.s3_sse=tenant_key``."""
    if settings.blob.backend == "s3":
        from celeriac.platform.storage.s3 import S3BlobStore, s3_client  # noqa: PLC0415 - boto3, for S3 only

        assert settings.blob.s3_bucket is not None  # Settings refuses s3 without a bucket
        sse_key_for = None
        if settings.blob.s3_sse == "tenant_key":
            if key_provider is None:
                key_provider = key_provider_from_settings(settings)
            sse_key_for = key_provider.tenant_key_id
        return S3BlobStore(
            s3_client(settings), settings.blob.s3_bucket, sse_kms_key_for=sse_key_for
        )
    return LocalBlobStore(settings.blob.local_dir)
