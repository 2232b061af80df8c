"""The process-wide key provider, envelope and encrypted blob store, built from settings."""

from __future__ import annotations

import logging
from functools import lru_cache

from celeriac.platform.cache import get_cache
from celeriac.platform.crypto.envelope import Envelope, envelope_from_settings
from celeriac.platform.crypto.keys import KeyProvider, key_provider_from_settings
from celeriac.platform.jobs.data_keys import JobDataKeys
from celeriac.platform.settings import get_settings
from celeriac.platform.storage import (
    BlobStore,
    CachedBlobStore,
    ClearBlobStoreForBenchmarks,
    EncryptedBlobStore,
    blob_store_from_settings,
    hot_job_blob,
)

logger = logging.getLogger(__name__)


@lru_cache(maxsize=1)
def key_provider() -> KeyProvider:
    return key_provider_from_settings(get_settings())


@lru_cache(maxsize=1)
def envelope() -> Envelope:
    return envelope_from_settings(get_settings(), key_provider())


@lru_cache(maxsize=1)
def tenant_blobs() -> EncryptedBlobStore:
    """Blobs encrypted under their tenant's key (payloads, datasets, results), a job's
    under the job's own key (docs/adr/0015). When
    ``settings.caches_blobs``, a job's hot blobs are read through the shared cache, which
    holds their ciphertext (the encryption is on top of it)."""
    settings = get_settings()
    store: BlobStore = blob_store_from_settings(settings, key_provider())
    if not settings.keys.encryption:  # only with CELERIAC_ENVIRONMENT=benchmark
        # Never cached: the cache would hold plaintext.
        logger.warning("tenant blobs are stored UNENCRYPTED (keys.encryption=false, benchmark)")
        return ClearBlobStoreForBenchmarks(store, envelope())
    job_keys = JobDataKeys(
        envelope(),
        cache_size=settings.keys.data_key_cache_size,
        cache_ttl_seconds=settings.keys.data_key_cache_ttl_seconds,
    )
    if settings.caches_blobs:
        store = CachedBlobStore(
            store,
            get_cache(),
            max_entry_bytes=settings.cache.blob_max_bytes,
            ttl_seconds=settings.cache.blob_ttl_seconds,
            cacheable=hot_job_blob,
        )
    return EncryptedBlobStore(store, envelope(), job_keys)
