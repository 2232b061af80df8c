"""Fixtures for tests against the machine's real PostgreSQL and Redis.

Each pytest-xdist worker gets its own PostgreSQL database (``celeriac_test_<worker>``) and
its own Redis db numbers, so parallel runs and a developer's instance never collide.
``TEST_PG_URL`` and ``TEST_REDIS_URL`` point elsewhere when needed.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import redis

REPO = Path(__file__).resolve().parent.parent
PG_SERVER = os.environ.get("TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432")
REDIS_SERVER = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379")
# Redis dbs 8..15 belong to the tests: two per xdist worker (broker, cache).
REDIS_FIRST_DB = 8


def _worker_index(worker_id: str) -> int:
    return 0 if worker_id == "master" else int(worker_id.removeprefix("gw"))


@pytest.fixture(scope="session")
def pg_url(worker_id: str) -> Iterator[str]:
    """A fresh, empty PostgreSQL database for this test worker."""
    name = f"celeriac_test_{worker_id}"
    admin_dsn = PG_SERVER.replace("postgresql+psycopg://", "postgresql://") + "/postgres"
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    yield f"{PG_SERVER}/{name}"
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


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


@pytest.fixture
def var_dir(tmp_path: Path) -> Path:
    path = tmp_path / "var"
    path.mkdir()
    return path
