"""The API process's ops port, end to end: ``celeriac api`` serves the backlog KEDA scales
on from a second socket, behind a bearer token, and keeps serving it while PostgreSQL is
down (the backlog lives in Redis; only /readyz follows the database).

The database here is a PostgreSQL cluster of this test's own (pg_createcluster on a free
port), so that stopping it stops nobody else's tests."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest
from conftest import DB_PREFIX, REDIS_SERVER

from support import celeriac_env, free_port, run_celeriac
from worker_support import wait_until

pytestmark = [
    pytest.mark.slow,
    # One cluster for the module: its tests run on one xdist worker (--dist loadgroup).
    pytest.mark.xdist_group("own-postgresql-cluster"),
    pytest.mark.skipif(
        shutil.which("pg_createcluster") is None,
        reason="needs Debian's postgresql-common (pg_createcluster) to run a database it may stop",
    ),
]
TOKEN = "k" * 40


class OwnCluster:
    """A PostgreSQL cluster created for one test (trust auth on 127.0.0.1)."""

    def __init__(self) -> None:
        self.version = sorted(os.listdir("/etc/postgresql"))[-1]
        # One per xdist worker, should the module's tests be spread over several.
        self.name = f"{DB_PREFIX}_ops_{os.environ.get('PYTEST_XDIST_WORKER', 'main')}"
        self.port = free_port()
        subprocess.run(
            ["pg_dropcluster", "--stop", self.version, self.name], capture_output=True, check=False
        )
        created = subprocess.run(
            [
                "pg_createcluster",
                self.version,
                self.name,
                "-p",
                str(self.port),
                "--",
                "--auth-local=trust",
                "--auth-host=trust",
            ],
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
        )
        assert created.returncode == 0, created.stderr
        self.start()
        with psycopg.connect(self.dsn("postgres"), autocommit=True) as conn:
            conn.execute("CREATE DATABASE celeriac")

    def dsn(self, database: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def _ctl(self, action: str, *options: str) -> None:
        subprocess.run(
            [
                "pg_ctlcluster",
                "--skip-systemctl-redirect",
                self.version,
                self.name,
                action,
                *options,
            ],
            capture_output=True,
            check=True,
            timeout=120,
        )

    def start(self) -> None:
        self._ctl("start")

    def stop(self) -> None:
        self._ctl("stop", "-m", "fast")

    def drop(self) -> None:
        subprocess.run(
            ["pg_dropcluster", "--stop", self.version, self.name],
            capture_output=True,
            check=False,
            timeout=120,
        )


@pytest.fixture(scope="module")
def own_cluster() -> Iterator[OwnCluster]:
    cluster = OwnCluster()
    yield cluster
    cluster.drop()


@pytest.fixture
def api_process(
    own_cluster: OwnCluster, var_dir: Path, redis_broker_url: str, redis_dbs: tuple[int, int]
) -> Iterator[tuple[str, str]]:
    """``celeriac api`` on the own cluster: (public base URL, ops base URL)."""
    port, ops_port = free_port(), free_port()
    settings = {
        "database_url": own_cluster.dsn("celeriac").replace(
            "postgresql://", "postgresql+psycopg://"
        ),
        "broker_url": redis_broker_url,
        "redis_url": f"{REDIS_SERVER}/{redis_dbs[1]}",
        "api__ops_port": str(ops_port),
        "api__metrics_token": TOKEN,
    }
    migrated = run_celeriac(var_dir, "migrate", **settings)
    assert migrated.returncode == 0, migrated.stderr
    log = (var_dir / "api.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "celeriac.platform.cli", "api", "--port", str(port)],
        env=celeriac_env(var_dir, **settings),
        cwd=var_dir.parent,
        stdout=log,
        stderr=log,
        start_new_session=True,
    )
    public, ops = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{ops_port}"

    def up() -> bool:
        assert process.poll() is None, (var_dir / "api.log").read_text()
        try:
            return httpx.get(f"{public}/readyz", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    wait_until(up, 60, "the API to be ready")
    yield public, ops
    os.killpg(process.pid, signal.SIGTERM)
    process.wait(timeout=30)


def _backlog(ops: str, **headers: str) -> httpx.Response:
    return httpx.get(f"{ops}/metrics/backlog", headers=headers, timeout=10)


def test_the_ops_port_serves_the_backlog_only_with_the_token(
    api_process: tuple[str, str],
) -> None:
    public, ops = api_process
    answer = _backlog(ops, Authorization=f"Bearer {TOKEN}")
    assert answer.status_code == 200, answer.text
    assert set(answer.json()) == {"orchestration", "distribution", "compute"}
    unauthenticated = _backlog(ops)
    assert unauthenticated.status_code == 401
    assert unauthenticated.headers["content-type"] == "application/problem+json"
    assert _backlog(ops, Authorization="Bearer " + "w" * 40).status_code == 401
    # Each port serves only its own app.
    assert httpx.get(f"{public}/metrics/backlog", timeout=10).status_code == 404
    assert httpx.get(f"{ops}/healthz", timeout=10).status_code == 404
    assert httpx.get(f"{public}/healthz", timeout=10).status_code == 200


def test_the_backlog_answers_while_postgresql_is_down(
    api_process: tuple[str, str], own_cluster: OwnCluster, request: pytest.FixtureRequest
) -> None:
    public, ops = api_process
    own_cluster.stop()
    request.addfinalizer(own_cluster.start)

    def unready() -> bool:
        return httpx.get(f"{public}/readyz", timeout=10).status_code == 503

    wait_until(unready, 60, "/readyz to report the database down")
    answer = _backlog(ops, Authorization=f"Bearer {TOKEN}")
    assert answer.status_code == 200, answer.text
    assert answer.json()["compute"]["demand"] == 0
