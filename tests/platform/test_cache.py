"""The cache-aside layer on a real Redis: hot blobs are served from Redis as ciphertext,
configuration is cached and dropped when it changes, entries expire, and without Redis
(or with Redis gone) everything reads from the source."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from conftest import REDIS_SERVER, TenantFixture, clear_process_caches
from fastapi.testclient import TestClient
from sqlalchemy import update

from celeriac.platform.cache import SharedCache, blob_entry, get_cache, tenant_entry
from celeriac.platform.crypto import Envelope, LocalKeyring
from celeriac.platform.db import transaction
from celeriac.platform.jobs.pipelines import (
    ANALYZER,
    DATASET,
    REGISTRY_ENTRY,
    PluginInfo,
    load_plugins,
    register_plugins,
    resolve_against,
)
from celeriac.platform.models import Tenant, TenantStatus
from celeriac.platform.settings import BlobSettings, CacheSettings, Settings, load_settings
from celeriac.platform.storage import (
    BlobNotFound,
    CachedBlobStore,
    EncryptedBlobStore,
    LocalBlobStore,
    hot_job_blob,
    job_blob_key,
)
from celeriac.platform.tenant_data import tenant_blobs
from celeriac.platform.tenants.profile import tenant_profile

from support import free_port
from worker_support import wait_until

ACME, GLOBEX = "acme", "globex"


class CountingStore(LocalBlobStore):
    """The real local store, counting whole-blob reads."""

    reads = 0

    def get(self, key: str) -> bytes:
        self.reads += 1
        return super().get(key)


@pytest.fixture
def cache_client(redis_dbs: tuple[int, int]) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(f"{REDIS_SERVER}/{redis_dbs[1]}")
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


@pytest.fixture
def store(tmp_path: Path) -> CountingStore:
    return CountingStore(tmp_path / "blobs")


def _blobs(
    tmp_path: Path, store: LocalBlobStore, cache: SharedCache, max_entry_bytes: int = 4096
) -> EncryptedBlobStore:
    keyring = LocalKeyring(tmp_path / "keys" / "keyring.json")
    for tenant in (ACME, GLOBEX):
        keyring.create_tenant_key(tenant)
    cached = CachedBlobStore(
        store, cache, max_entry_bytes=max_entry_bytes, ttl_seconds=cache.settings.blob_ttl_seconds
    )
    return EncryptedBlobStore(cached, Envelope(keyring))


def _cache(client: redis.Redis | None, **settings: float) -> SharedCache:
    return SharedCache(client, CacheSettings.model_validate(settings))


# -- blobs ----------------------------------------------------------------------------------


def test_a_hot_blob_is_read_from_the_store_once_and_redis_holds_only_its_ciphertext(
    tmp_path: Path, store: CountingStore, cache_client: redis.Redis
) -> None:
    blobs = _blobs(tmp_path, store, _cache(cache_client))
    key = job_blob_key(ACME, "j1", "payload/00000.ndjson")
    record = b'{"id": 1, "text": "my card number is 4111-1111"}\n'
    blobs.put(ACME, key, record)

    assert [blobs.get(ACME, key) for _ in range(3)] == [record] * 3
    assert store.reads == 1
    cached = cache_client.get(blob_entry(key))
    assert cached == store.get(key)  # the bytes the store holds: the envelope
    assert cached is not None
    assert cached.startswith(b"CLRE")
    assert b"4111" not in cached

    # Served from Redis with the file gone behind the store's back (and still decrypted
    # and authenticated like the stored copy).
    (tmp_path / "blobs" / "tenants" / ACME / "jobs+j1+payload+00000.ndjson").unlink()
    assert blobs.get(ACME, key) == record


def test_overwriting_or_deleting_a_blob_drops_its_cached_copy(
    tmp_path: Path, store: CountingStore, cache_client: redis.Redis
) -> None:
    blobs = _blobs(tmp_path, store, _cache(cache_client))
    key = job_blob_key(ACME, "j1", "analysis/summary--tabular.json")
    blobs.put(ACME, key, b"first")
    assert blobs.get(ACME, key) == b"first"

    blobs.put(ACME, key, b"second")
    assert cache_client.exists(blob_entry(key)) == 0
    assert blobs.get(ACME, key) == b"second"
    assert blobs.get(ACME, key) == b"second"
    assert store.reads == 2

    blobs.delete(ACME, key)
    assert cache_client.exists(blob_entry(key)) == 0
    with pytest.raises(BlobNotFound):
        blobs.get(ACME, key)


def test_deleting_a_tenants_blobs_drops_only_its_cached_copies(
    tmp_path: Path, store: CountingStore, cache_client: redis.Redis
) -> None:
    blobs = _blobs(tmp_path, store, _cache(cache_client))
    keys = {
        t: [job_blob_key(t, "j1", f"datasets/tabular/{i:05d}.parquet") for i in range(3)]
        for t in (ACME, GLOBEX)
    }
    for tenant, tenant_keys in keys.items():
        for key in tenant_keys:
            blobs.put(tenant, key, key.encode())
            blobs.get(tenant, key)
    assert all(cache_client.exists(blob_entry(k)) for ks in keys.values() for k in ks)

    assert blobs.delete_tenant(ACME) == 3
    assert not any(cache_client.exists(blob_entry(k)) for k in keys[ACME])
    assert all(cache_client.exists(blob_entry(k)) for k in keys[GLOBEX])
    with pytest.raises(BlobNotFound):
        blobs.get(ACME, keys[ACME][0])
    assert blobs.get(GLOBEX, keys[GLOBEX][0]) == keys[GLOBEX][0].encode()


def test_a_blob_over_the_entry_bound_is_not_cached(
    tmp_path: Path, store: CountingStore, cache_client: redis.Redis
) -> None:
    blobs = _blobs(tmp_path, store, _cache(cache_client), max_entry_bytes=1000)
    small = job_blob_key(ACME, "j1", "small")
    large = job_blob_key(ACME, "j1", "large")
    blobs.put(ACME, small, b"x" * 100)
    blobs.put(ACME, large, os.urandom(2000))
    for _ in range(2):
        blobs.get(ACME, small)
        blobs.get(ACME, large)
    assert store.reads == 3  # small once, large twice
    assert cache_client.exists(blob_entry(small)) == 1
    assert cache_client.exists(blob_entry(large)) == 0
    assert cache_client.keys("*lease*") == []  # the big blob's reader gave its lease back


def test_only_what_several_tasks_of_a_job_read_is_cached(
    tmp_path: Path, store: CountingStore, cache_client: redis.Redis
) -> None:
    keyring = LocalKeyring(tmp_path / "keys" / "keyring.json")
    keyring.create_tenant_key(ACME)
    cache = _cache(cache_client)
    cached = CachedBlobStore(
        store, cache, max_entry_bytes=4096, ttl_seconds=60, cacheable=hot_job_blob
    )
    blobs = EncryptedBlobStore(cached, Envelope(keyring))
    hot = [
        job_blob_key(ACME, "j1", "payload/00000.ndjson"),
        job_blob_key(ACME, "j1", "datasets/tabular/00000.parquet"),
    ]
    once = [
        job_blob_key(ACME, "j1", "analysis/summary--tabular.json"),
        job_blob_key(ACME, "j1", "result.json"),
    ]
    for key in hot + once:
        blobs.put(ACME, key, b"data")
        blobs.get(ACME, key)
        blobs.get(ACME, key)
    assert store.reads == 2 * 1 + 2 * 2
    assert [cache_client.exists(blob_entry(k)) for k in hot + once] == [1, 1, 0, 0]


def test_blobs_are_cached_over_a_remote_store_unless_asked_for() -> None:
    url = "redis://cache:6379/1"
    on, off = CacheSettings(blobs="on"), CacheSettings(blobs="on", enabled=False)
    assert not Settings(redis_url=url).caches_blobs  # local: its page cache is faster
    assert Settings(redis_url=url, blob=BlobSettings(backend="s3", s3_bucket="b")).caches_blobs
    assert Settings(redis_url=url, cache=on).caches_blobs
    assert not Settings(cache=on).caches_blobs  # no Redis
    assert not Settings(redis_url=url, cache=off).caches_blobs


def test_an_entry_expires_after_its_ttl(
    tmp_path: Path, store: CountingStore, cache_client: redis.Redis
) -> None:
    blobs = _blobs(tmp_path, store, _cache(cache_client, blob_ttl_seconds=0.3))
    key = job_blob_key(ACME, "j1", "payload/00000.ndjson")
    blobs.put(ACME, key, b"records")
    blobs.get(ACME, key)
    blobs.get(ACME, key)
    assert store.reads == 1
    assert 0 < cache_client.pttl(blob_entry(key)) <= 300

    wait_until(lambda: cache_client.exists(blob_entry(key)) == 0, 10, "Redis to expire the entry")
    assert blobs.get(ACME, key) == b"records"
    assert store.reads == 2


def test_a_value_loaded_before_an_invalidation_is_not_stored(cache_client: redis.Redis) -> None:
    # The race of plain cache-aside: a reader loads the old value, a writer changes the
    # source and invalidates, then the reader would store the old value for a whole TTL.
    cache = _cache(cache_client)
    key = tenant_entry(ACME, "profile")

    def load_while_a_writer_changes_it() -> bytes:
        cache.invalidate(key)  # the writer's invalidation lands during the load
        return b"old"

    assert cache.get_or_load(key, load_while_a_writer_changes_it, ttl_seconds=60) == b"old"
    assert cache_client.exists(key) == 0
    assert cache.get_or_load(key, lambda: b"new", ttl_seconds=60) == b"new"
    assert cache.get_or_load(key, lambda: b"newer", ttl_seconds=60) == b"new"


# -- no Redis, or Redis gone ----------------------------------------------------------------


def test_without_redis_the_embedded_mode_reads_the_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in list(os.environ):
        if name.startswith("CELERIAC_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("CELERIAC_VAR_DIR", str(tmp_path / "var"))
    clear_process_caches()
    try:
        assert load_settings().redis_url is None
        assert not get_cache().enabled
        blobs = tenant_blobs()
        assert not isinstance(blobs.store, CachedBlobStore)
        blobs.envelope.provider.create_tenant_key(ACME)
        key = job_blob_key(ACME, "j1", "payload/00000.ndjson")
        blobs.put(ACME, key, b"records")
        assert blobs.get(ACME, key) == b"records"
        loads = []

        def load() -> bytes:
            loads.append(1)
            return b"value"

        for _ in range(2):
            assert get_cache().get_or_load("k", load, ttl_seconds=60) == b"value"
        assert len(loads) == 2
    finally:
        clear_process_caches()


def test_an_unreachable_redis_degrades_to_the_store(tmp_path: Path, store: CountingStore) -> None:
    gone = redis.Redis(port=free_port(), socket_connect_timeout=1)
    blobs = _blobs(tmp_path, store, _cache(gone))
    key = job_blob_key(ACME, "j1", "payload/00000.ndjson")
    blobs.put(ACME, key, b"records")  # the invalidation fails quietly
    assert [blobs.get(ACME, key) for _ in range(2)] == [b"records"] * 2
    assert store.reads == 2
    assert blobs.delete_tenant(ACME) == 1


# -- configuration --------------------------------------------------------------------------


def test_a_tenant_profile_is_cached_until_the_tenant_changes_or_is_deleted(
    client: TestClient,
    admin_headers: dict[str, str],
    make_tenant: Callable[..., TenantFixture],
    api_settings: Settings,
) -> None:
    tenant = make_tenant("cached-co")
    tenant_id = uuid.UUID(tenant.id)
    with transaction() as session:
        assert tenant_profile(session, tenant_id).plan == "free"
    # A change that bypasses the platform is not seen while the entry lives: reads are
    # served from Redis.
    with transaction() as session:
        session.execute(update(Tenant).where(Tenant.id == tenant_id).values(plan="pro"))
    with transaction() as session:
        assert tenant_profile(session, tenant_id).plan == "free"

    suspended = client.patch(
        f"/v1/admin/tenants/{tenant.id}", headers=admin_headers, json={"status": "suspended"}
    )
    assert suspended.status_code == 200, suspended.text
    with transaction() as session:
        profile = tenant_profile(session, tenant_id)
    assert (profile.slug, profile.status, profile.plan) == (
        "cached-co",
        TenantStatus.SUSPENDED,
        "pro",
    )

    # Deleting the tenant deletes every entry of its own, blob ciphertext included.
    key = job_blob_key(tenant.id, "j1", "payload/00000.ndjson")
    get_cache().get_or_load(blob_entry(key), lambda: b"CLRE...", ttl_seconds=60)
    cache_client = get_cache().client
    assert cache_client is not None
    assert cache_client.exists(blob_entry(key), tenant_entry(tenant.id, "profile")) == 2
    assert client.delete(f"/v1/admin/tenants/{tenant.id}", headers=admin_headers).status_code == 200
    assert cache_client.keys(f"celeriac:cache:*{tenant.id}*") == []


def test_publishing_the_plugin_registry_drops_the_shared_copy(api_settings: Settings) -> None:
    summary = PluginInfo(ANALYZER, "summary", "1.0", {"type": "object"}, accepts=("table",))
    tabular = PluginInfo(DATASET, "tabular", "1.0", {"type": "object"}, produces="table")
    with transaction() as session:
        register_plugins(session, [tabular, summary])
    assert sorted(load_plugins()) == [(ANALYZER, "summary"), (DATASET, "tabular")]
    cache_client = get_cache().client
    assert cache_client is not None
    shared = json.loads(cache_client.get(REGISTRY_ENTRY) or b"[]")
    assert sorted(row["name"] for row in shared) == ["summary", "tabular"]

    row_count = PluginInfo(ANALYZER, "row_count", "0.1.0", {"type": "object"}, accepts=("table",))
    with transaction() as session:
        register_plugins(session, [row_count])
        assert cache_client.exists(REGISTRY_ENTRY) == 1  # not before the commit
    assert cache_client.exists(REGISTRY_ENTRY) == 0
    spec = {"datasets": [{"name": "tabular"}], "analyzers": [{"name": "row_count"}]}
    assert resolve_against(load_plugins(), spec)["analyzers"][0]["version"] == "0.1.0"
