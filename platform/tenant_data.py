"""The process-wide key provider, envelope and encrypted blob store, built from settings."""

from __future__ import annotations

import logging
from functools import lru_cache

from celeriac.platform.crypto.envelope import Envelope, envelope_from_settings
from celeriac.platform.crypto.keys import KeyProvider, key_provider_from_settings
from celeriac.platform.settings import get_settings
from celeriac.platform.storage import (
    ClearBlobStoreForBenchmarks,
    EncryptedBlobStore,
    blob_store_from_settings,
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
    """Blobs encrypted under their tenant's key (payloads, datasets, results)."""
    settings = get_settings()
    store = blob_store_from_settings(settings, key_provider())
    if not settings.keys.encryption:  # only with CELERIAC_ENVIRONMENT=benchmark
        logger.warning("tenant blobs are stored UNENCRYPTED (keys.encryption=false, benchmark)")
        return ClearBlobStoreForBenchmarks(store, envelope())
    return EncryptedBlobStore(store, envelope())
