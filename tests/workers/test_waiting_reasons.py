"""``waiting_reason`` on real workers, its numbers read from the fair dispatcher's state.

The orchestration pool runs with one slot, and the test holds that slot: it locks one
tenant's row (``FOR NO KEY UPDATE``, as ``lifecycle.start`` does), so that tenant's job
start blocks in the worker. With no free orchestration slot the dispatcher releases
nothing, and the other tenants' job starts wait in their own queues, where
``GET /v1/jobs/{id}`` reads their position and the ring of tenants with a backlog. When the
lock goes, every job runs to its end.

The running-job limit is seen with a job that keeps its compute task busy (the chaos
plugin's sleep, ended by cancelling the job): the tenant's next job is held at its start.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import redis
from conftest import TenantFixture
from fastapi.testclient import TestClient
from sqlalchemy import text

from celeriac.platform.db import get_engine
from celeriac.platform.dispatch import BUSY, MEMBERS, SLOTS
from celeriac.platform.queues import Pool

from worker_support import Workers, three_pools, wait_for_job, wait_until

pytestmark = pytest.mark.slow

RECORDS = [{"id": i, "amount": i * 1.5} for i in range(8)]
PIPELINE = {"datasets": [{"name": "tabular"}], "analyzers": [{"name": "summary"}]}
ORCHESTRATION = Pool.ORCHESTRATION.value


@pytest.fixture
def one_slot_workers(worker_env: dict[str, str], var_dir: Path) -> Iterator[Workers]:
    """The three pools, the orchestration pool with a single slot."""
    with three_pools(worker_env, var_dir, orchestration_slots=1) as running:
        yield running


@pytest.fixture
def broker(redis_broker_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_broker_url, decode_responses=True)
    yield client
    client.close()


def _submit(client: TestClient, tenant: TenantFixture, pipeline: dict[str, Any] = PIPELINE) -> str:
    answer = client.post(
        "/v1/jobs", json={"pipeline": pipeline, "records": RECORDS}, headers=tenant.headers
    )
    assert answer.status_code == 202, answer.text
    return str(answer.json()["id"])


def _reason(client: TestClient, tenant: TenantFixture, job_id: str) -> dict[str, Any]:
    job = client.get(f"/v1/jobs/{job_id}", headers=tenant.headers)
    assert job.status_code == 200, job.text
    assert job.json()["state"] == "queued", job.json()
    reason: dict[str, Any] = job.json()["waiting_reason"]
    return reason


def _lock_waiters() -> int:
    """Backends of this database waiting on a row lock (the blocked job start)."""
    with get_engine().connect() as conn:
        return int(
            conn.execute(
                text(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                    "AND wait_event_type = 'Lock'"
                )
            ).scalar_one()
        )


@contextmanager
def orchestration_held(
    client: TestClient, broker: redis.Redis, tenant: TenantFixture
) -> Iterator[str]:
    """The only orchestration slot is busy with ``tenant``'s job start, blocked on the
    tenant's row; yields that job's id. The slot frees (and the job runs) on exit."""
    with get_engine().connect() as conn:
        conn.execute(
            text("SELECT id FROM tenants WHERE id = :id FOR NO KEY UPDATE"), {"id": tenant.id}
        )
        job_id = _submit(client, tenant)
        wait_until(lambda: _lock_waiters() >= 1, 60, "the job start to block on the tenant row")
        slots = broker.hgetall(SLOTS.format(pool=ORCHESTRATION))
        busy = broker.hgetall(BUSY.format(pool=ORCHESTRATION))
        assert sum(map(int, slots.values())) == 1, slots
        wait_until(
            lambda: sum(map(int, broker.hgetall(BUSY.format(pool=ORCHESTRATION)).values())) >= 1,
            30,
            f"the dispatcher to count the slot busy ({busy})",
        )
        try:
            yield job_id
        finally:
            conn.rollback()


def test_queued_behind_own_tasks_and_fair_share_on_real_workers(
    client: TestClient,
    make_tenant: Callable[..., TenantFixture],
    one_slot_workers: Workers,
    broker: redis.Redis,
) -> None:
    busy, mine, other = make_tenant("busy"), make_tenant("mine"), make_tenant("other")
    with orchestration_held(client, broker, busy) as busy_job:
        first, second, third = (_submit(client, mine) for _ in range(3))
        theirs = _submit(client, other)
        # The dispatcher's state the reasons must agree with.
        assert broker.llen(f"orchestration.normal.{mine.slug}") == 3
        assert broker.llen(f"orchestration.normal.{other.slug}") == 1
        members = broker.smembers(MEMBERS.format(pool=ORCHESTRATION))
        assert {mine.slug, other.slug} <= members

        for job_id, ahead in ((third, 2), (second, 1)):
            reason = _reason(client, mine, job_id)
            assert reason["reason"] == "queued-behind-own-tasks", reason
            assert (reason["ahead"], reason["band"]) == (ahead, "normal")
            assert f"{ahead} of the tenant's own tasks in band normal" in reason["detail"]
        # The next of its own to go: it waits for a slot, shared with the other tenants in
        # the dispatcher's ring ("busy" stays a member, holding the slot, until its turn
        # finds its queue empty).
        others = len(members - {mine.slug})
        assert others >= 1
        reason = _reason(client, mine, first)
        assert reason["reason"] == "fair-share", reason
        assert reason["active_tenants"] == others
        assert reason["ahead"] == 0
        assert f"{others} other active tenant" in reason["detail"]
        reason = _reason(client, other, theirs)
        assert reason["reason"] == "fair-share", reason
        assert reason["active_tenants"] == len(members - {other.slug})

    for tenant, job_id in ((busy, busy_job), (mine, first), (mine, second), (mine, third)):
        assert wait_for_job(client, tenant.headers, job_id, timeout=120)["state"] == "succeeded"
    assert wait_for_job(client, other.headers, theirs, timeout=120)["state"] == "succeeded"


def test_a_suspended_tenant_sees_its_job_held_on_real_workers(
    client: TestClient,
    make_tenant: Callable[..., TenantFixture],
    admin_headers: dict[str, str],
    one_slot_workers: Workers,
    broker: redis.Redis,
) -> None:
    busy, paused = make_tenant("busy"), make_tenant("paused")
    with orchestration_held(client, broker, busy) as busy_job:
        job_id = _submit(client, paused)
        suspended = client.patch(
            f"/v1/admin/tenants/{paused.id}", json={"status": "suspended"}, headers=admin_headers
        )
        assert suspended.status_code == 200, suspended.text
    # The slot is free and the other tenant's job runs through; the suspended tenant's
    # start stays in its queue (the dispatcher skips it), and its key can read why.
    assert wait_for_job(client, busy.headers, busy_job, timeout=120)["state"] == "succeeded"
    assert broker.llen(f"orchestration.normal.{paused.slug}") == 1
    reason = _reason(client, paused, job_id)
    assert reason["reason"] == "tenant-suspended", reason
    assert "reactivates" in reason["detail"], reason
    refused = client.post(
        "/v1/jobs", json={"pipeline": PIPELINE, "records": RECORDS}, headers=paused.headers
    )
    assert refused.status_code == 403
    assert refused.json()["code"] == "tenant-suspended"

    resumed = client.patch(
        f"/v1/admin/tenants/{paused.id}", json={"status": "active"}, headers=admin_headers
    )
    assert resumed.status_code == 200, resumed.text
    assert wait_for_job(client, paused.headers, job_id, timeout=120)["state"] == "succeeded"


def test_a_job_over_the_running_job_limit_is_held_with_the_limit_on_real_workers(
    client: TestClient,
    make_tenant: Callable[..., TenantFixture],
    admin_headers: dict[str, str],
    workers: Workers,
    tmp_path: Path,
) -> None:
    limited = make_tenant("limited")
    put = client.put(
        f"/v1/admin/tenants/{limited.id}/quotas",
        json={"max_running_jobs": 1},
        headers=admin_headers,
    )
    assert put.status_code == 200, put.text
    marker = tmp_path / "started"
    long_running = {
        "datasets": [{"name": "tabular"}],
        "analyzers": [{"name": "chaos_sleep", "params": {"seconds": 300, "marker": str(marker)}}],
    }
    first = _submit(client, limited, long_running)
    wait_until(marker.exists, 120, "the first job's long task to start")
    assert client.get(f"/v1/jobs/{first}", headers=limited.headers).json()["state"] == "running"

    second = _submit(client, limited)

    def held() -> dict[str, Any] | None:
        job: dict[str, Any] = client.get(f"/v1/jobs/{second}", headers=limited.headers).json()
        return job if job["held_since"] is not None else None

    job = wait_until(held, 60, "the second job's start to be held by the limit")
    assert job["state"] == "queued", job
    reason = job["waiting_reason"]
    assert reason["reason"] == "running-job-limit", reason
    assert (reason["limit"], reason["running"]) == (1, 1), reason
    assert "its limit is 1 (max_running_jobs)" in reason["detail"], reason
    assert "job held" in workers.log("orchestration")  # the worker's start held it

    cancelled = client.post(f"/v1/jobs/{first}/cancel", headers=limited.headers)
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["state"] == "cancelled"

    # The first job's end released the held one: it runs, and no longer says why it waits.
    def released() -> dict[str, Any] | None:
        job: dict[str, Any] = client.get(f"/v1/jobs/{second}", headers=limited.headers).json()
        return job if job["state"] != "queued" else None

    started: dict[str, Any] = wait_until(released, 120, "the held job to start")
    assert started["waiting_reason"] is None, started
    assert started["held_since"] is None, started
    done = wait_for_job(client, limited.headers, second, timeout=120)
    assert done["state"] == "succeeded", (done, workers.log("compute")[-2000:])
    assert done["waiting_reason"] is None
