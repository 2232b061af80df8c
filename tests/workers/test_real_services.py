"""The same code on PostgreSQL and Redis: only environment variables change."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from celeriac.platform.db import create_db_engine
from celeriac.platform.models import AuditEntry, Tenant
from celeriac.platform.settings import load_settings
from celeriac.workers.celery_app import create_celery_app

from support import celeriac_env, run_celeriac

pytestmark = pytest.mark.slow


@pytest.fixture
def services(
    var_dir: Path, pg_url: str, redis_broker_url: str, redis_dbs: tuple[int, int]
) -> dict[str, str]:
    result_url = redis_broker_url.rsplit("/", 1)[0] + f"/{redis_dbs[1]}"
    return {"database_url": pg_url, "broker_url": redis_broker_url, "redis_url": result_url}


@pytest.fixture
def compute_worker(var_dir: Path, services: dict[str, str]) -> Iterator[subprocess.Popen[bytes]]:
    with (var_dir / "worker.log").open("wb") as log:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celeriac.platform.cli",
                "worker",
                "--pool",
                "compute",
                "--concurrency",
                "1",
            ],
            env=celeriac_env(var_dir, **services),
            cwd=var_dir.parent,
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
        yield process
        process.terminate()
        process.wait(timeout=60)


def test_migrate_admin_and_worker_on_postgresql_and_redis(
    var_dir: Path,
    services: dict[str, str],
    compute_worker: subprocess.Popen[bytes],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert run_celeriac(var_dir, "migrate", **services).returncode == 0
    created = run_celeriac(var_dir, "admin", "create-tenant", "acme", **services)
    assert created.returncode == 0, created.stderr

    engine = create_db_engine(services["database_url"])
    with engine.connect() as conn:
        tenant = conn.execute(select(Tenant.id, Tenant.slug, Tenant.status)).one()
        audit = conn.execute(select(AuditEntry.action, AuditEntry.tenant_id)).one()
    engine.dispose()
    assert (tenant.slug, tenant.status) == ("acme", "active")
    assert (audit.action, audit.tenant_id) == ("tenant.create", tenant.id)
    assert not (var_dir / "celeriac.db").exists()

    for key, value in celeriac_env(var_dir, **services).items():
        if key.startswith("CELERIAC_"):
            monkeypatch.setenv(key, value)
    client = create_celery_app(load_settings())
    result = client.send_task("celeriac.compute.ping", kwargs={"tenant_id": str(tenant.id)})
    assert result.get(timeout=60) == "compute"
    assert compute_worker.poll() is None

    # The task's log line is JSON and carries the task and tenant it ran for.
    lines = [
        json.loads(line)
        for line in (var_dir / "worker.log").read_text().splitlines()
        if line.startswith("{")
    ]
    (ping,) = [line for line in lines if line["message"] == "ping"]
    assert (ping["task_id"], ping["tenant_id"]) == (result.id, str(tenant.id))
