"""Fixtures for tests against the machine's real PostgreSQL and Redis.

Each pytest-xdist worker gets its own PostgreSQL database (``celeriac_test_<worker>``) and
its own Redis db numbers, so parallel runs and a developer's instance never collide.
``TEST_PG_URL`` and ``TEST_REDIS_URL`` point elsewhere when needed.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
import redis
from fastapi.testclient import TestClient
from sqlalchemy import text

from celeriac.platform import (
    cache,
    db,
    dispatch,
    migrate,
    redis_client,
    settings,
    tasks,
    tenant_data,
)
from celeriac.platform.api import deps
from celeriac.platform.api.app import create_app
from celeriac.platform.auth.jwt import Role, mint_token
from celeriac.platform.db import create_db_engine, get_engine
from celeriac.platform.jobs import pipelines
from celeriac.platform.models import Base
from celeriac.platform.quotas import cache as quota_cache
from celeriac.platform.quotas import monthly, ratelimit
from celeriac.platform.settings import Settings, get_settings

from aws_support import Aws, moto_server

REPO = Path(__file__).resolve().parent.parent
PG_SERVER = os.environ.get("TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432")
REDIS_SERVER = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379")
# Two checkouts testing at once on one machine set different prefixes (and Redis servers).
DB_PREFIX = os.environ.get("TEST_DB_PREFIX", "celeriac_test")
# Redis dbs 8..15 belong to the tests: two per xdist worker (broker, cache).
REDIS_FIRST_DB = 8


def _worker_index(worker_id: str) -> int:
    return 0 if worker_id == "master" else int(worker_id.removeprefix("gw"))


@contextmanager
def _fresh_database(name: str) -> Iterator[str]:
    admin_dsn = PG_SERVER.replace("postgresql+psycopg://", "postgresql://") + "/postgres"
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    yield f"{PG_SERVER}/{name}"
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def empty_pg_url(worker_id: str) -> Iterator[str]:
    """An empty PostgreSQL database of this test worker's own (for migration tests)."""
    with _fresh_database(f"{DB_PREFIX}_{worker_id}_empty") as url:
        yield url


@pytest.fixture(scope="session")
def migrated_pg_url(worker_id: str) -> Iterator[str]:
    with _fresh_database(f"{DB_PREFIX}_{worker_id}") as url:
        migrate.upgrade(url)
        yield url


@pytest.fixture
def pg_url(migrated_pg_url: str) -> Iterator[str]:
    """This worker's migrated database, emptied after the test."""
    yield migrated_pg_url
    engine = create_db_engine(migrated_pg_url)
    tables = ", ".join(f'"{t.name}"' for t in Base.metadata.sorted_tables)
    with engine.begin() as conn:
        conn.execute(text(f"TRUNCATE {tables} CASCADE"))
    engine.dispose()


@pytest.fixture(scope="session")
def redis_dbs(worker_id: str) -> tuple[int, int]:
    first = REDIS_FIRST_DB + 2 * _worker_index(worker_id)
    if first + 1 > 15:
        pytest.fail("more xdist workers than test Redis dbs (8..15)")
    return first, first + 1


@pytest.fixture
def redis_broker_url(redis_dbs: tuple[int, int]) -> Iterator[str]:
    """A Redis db for the broker, emptied before and after the test."""
    url = f"{REDIS_SERVER}/{redis_dbs[0]}"
    client = redis.Redis.from_url(url)
    client.flushdb()
    yield url
    client.flushdb()
    client.close()


@pytest.fixture(scope="session")
def aws() -> Iterator[Aws]:
    """A moto server (KMS, S3) on 127.0.0.1 for this test process, started on first use."""
    with moto_server() as server:
        yield server


@pytest.fixture
def var_dir(tmp_path: Path) -> Path:
    path = tmp_path / "var"
    path.mkdir()
    return path


def clear_process_caches() -> None:
    """Forget the process-wide settings, engine, clients and auth caches."""
    for cached in (
        settings.get_settings,
        db.get_engine,
        db.get_sessionmaker,
        redis_client.get_redis,
        cache.get_cache,
        deps.auth_generation,
        deps.api_key_authenticator,
        tenant_data.key_provider,
        tenant_data.envelope,
        tenant_data.tenant_blobs,
        dispatch.get_dispatcher,
        quota_cache.quota_cache,
        ratelimit.rate_limiter,
        monthly.monthly_counter,
    ):
        cached.cache_clear()
    tasks.reset_default_publisher()
    # A registry read by an earlier test (other plugins) must not outlive it.
    pipelines.forget_local_registry()


@pytest.fixture
def api_settings(
    monkeypatch: pytest.MonkeyPatch,
    var_dir: Path,
    pg_url: str,
    redis_broker_url: str,
    redis_dbs: tuple[int, int],
) -> Iterator[Settings]:
    """Settings of an API on this worker's PostgreSQL database and Redis dbs."""
    for key in list(os.environ):
        if key.startswith("CELERIAC_"):
            monkeypatch.delenv(key)
    cache_url = f"{REDIS_SERVER}/{redis_dbs[1]}"
    redis.Redis.from_url(cache_url).flushdb()
    for key, value in {
        "VAR_DIR": str(var_dir),
        "DATABASE_URL": pg_url,
        "BROKER_URL": redis_broker_url,
        "REDIS_URL": cache_url,
        "WEBHOOKS__ALLOW_HTTP": "true",
        "WEBHOOKS__ALLOWED_CIDRS": '["127.0.0.0/8", "::1/128"]',
        "API__AUTH_CACHE_POLL_SECONDS": "0.2",
        "API__QUOTA_CACHE_POLL_SECONDS": "0.2",
    }.items():
        monkeypatch.setenv(f"CELERIAC_{key}", value)
    clear_process_caches()
    yield get_settings()
    get_engine().dispose()
    clear_process_caches()


@pytest.fixture
def client(api_settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(api_settings), raise_server_exceptions=False) as test_client:
        yield test_client


@pytest.fixture
def admin_headers(api_settings: Settings) -> dict[str, str]:
    return {"Authorization": f"Bearer {mint_token(api_settings, 'ops@test', Role.ADMIN)}"}


@dataclass
class TenantFixture:
    id: str
    slug: str
    key: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}


@pytest.fixture
def make_tenant(client: TestClient, admin_headers: dict[str, str]) -> Callable[..., TenantFixture]:
    """Create a tenant through the admin API and a key with the given scopes."""
    counter = iter(range(1000))

    def make(slug: str | None = None, scopes: list[str] | None = None) -> TenantFixture:
        slug = slug or f"tenant-{next(counter)}"
        created = client.post(
            "/v1/admin/tenants", json={"slug": slug, "name": slug}, headers=admin_headers
        )
        assert created.status_code == 201, created.text
        tenant_id = created.json()["id"]
        key = client.post(
            f"/v1/admin/tenants/{tenant_id}/keys",
            json={
                "scopes": scopes or ["jobs:write", "jobs:read", "webhooks:manage", "keys:manage"]
            },
            headers=admin_headers,
        )
        assert key.status_code == 201, key.text
        return TenantFixture(id=tenant_id, slug=slug, key=key.json()["key"])

    return make
