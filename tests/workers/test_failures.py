"""Failure and durability of the canvas on real workers: transient errors are retried,
failed branches do not sink the job, time limits, cancellation, a worker killed in the
middle of a task, and broker messages lost in the middle of a run."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis
from conftest import TenantFixture
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from celeriac.platform.db import get_engine
from celeriac.platform.models import JobTask, UsageRecord
from celeriac.platform.settings import Settings

from worker_support import Workers, wait_for_job, wait_until

pytestmark = pytest.mark.slow

RECORDS = [{"id": i, "amount": float(i), "text": "fine"} for i in range(20)]


def _submit(client: TestClient, tenant: TenantFixture, *analyzers: dict[str, Any]) -> str:
    answer = client.post(
        "/v1/jobs",
        headers=tenant.headers,
        json={
            "pipeline": {"datasets": [{"name": "tabular"}], "analyzers": list(analyzers)},
            "records": RECORDS,
        },
    )
    assert answer.status_code == 202, answer.text
    return str(answer.json()["id"])


def _tasks(job_id: str) -> dict[str, tuple[str, int, str | None]]:
    with get_engine().connect() as conn:
        columns = (JobTask.task_key, JobTask.state, JobTask.attempts, JobTask.error)
        rows = conn.execute(select(*columns).where(JobTask.job_id == job_id)).all()
    return {key: (state.value, attempts, error) for key, state, attempts, error in rows}


@pytest.fixture
def tenant(make_tenant: Callable[..., TenantFixture]) -> TenantFixture:
    return make_tenant("chaos")


@pytest.fixture
def fast_retries(worker_env: dict[str, str]) -> None:
    worker_env.update(
        {"CELERIAC_JOBS__TASK_MAX_RETRIES": "2", "CELERIAC_JOBS__RETRY_BACKOFF_SECONDS": "0.2"}
    )


def test_retries_then_partial_with_the_failed_branch_recorded(
    client: TestClient,
    tenant: TenantFixture,
    fast_retries: None,
    workers: Workers,
    tmp_path: Path,
) -> None:
    recovers = _submit(
        client,
        tenant,
        {"name": "summary"},
        {"name": "chaos_flaky", "params": {"marker": str(tmp_path / "once"), "failures": 1}},
    )
    gives_up = _submit(
        client,
        tenant,
        {"name": "summary"},
        {"name": "chaos_flaky", "params": {"marker": str(tmp_path / "always"), "failures": 99}},
        {"name": "chaos_fail"},
    )

    assert wait_for_job(client, tenant.headers, recovers)["state"] == "succeeded"
    assert _tasks(recovers)["analysis/chaos_flaky/tabular"][:2] == ("succeeded", 2)

    job = wait_for_job(client, tenant.headers, gives_up)
    assert job["state"] == "partial"
    tasks = _tasks(gives_up)
    assert tasks["analysis/summary/tabular"][0] == "succeeded"
    state, attempts, error = tasks["analysis/chaos_flaky/tabular"]
    # In clear only the class; the message (the plugin's ConnectionError) is the tenant's.
    assert (state, attempts) == ("failed", 3)
    assert "TransientError" in (error or "")
    flaky = next(e for e in job["errors"] if e["plugin"] == "chaos_flaky")
    assert "ConnectionError" in flaky["error"]
    assert tasks["analysis/chaos_fail/tabular"][:2] == ("failed", 1)  # permanent: no retry
    assert (tmp_path / "always").read_text() == "3"
    assert {(e["plugin"], e["state"]) for e in job["errors"]} == {
        ("chaos_flaky", "failed"),
        ("chaos_fail", "failed"),
    }
    results = client.get(f"/v1/jobs/{gives_up}/results", headers=tenant.headers).json()
    assert results["analyses"]["summary"]["tabular"]["rows"] == len(RECORDS)


def test_soft_time_limit_records_a_timeout(
    client: TestClient,
    tenant: TenantFixture,
    worker_env: dict[str, str],
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    worker_env.update(
        {
            "CELERIAC_WORKERS__COMPUTE_SOFT_TIME_LIMIT": "2",
            "CELERIAC_WORKERS__COMPUTE_HARD_TIME_LIMIT": "30",
        }
    )
    request.getfixturevalue("workers")
    job_id = _submit(
        client, tenant, {"name": "summary"}, {"name": "chaos_sleep", "params": {"seconds": 20}}
    )
    job = wait_for_job(client, tenant.headers, job_id, timeout=120)
    assert job["state"] == "partial", job
    state, _, error = _tasks(job_id)["analysis/chaos_sleep/tabular"]
    assert state == "timed_out"
    assert "time limit" in (error or "")


def test_cancel_stops_running_compute_and_ends_cancelled(
    client: TestClient, tenant: TenantFixture, workers: Workers, tmp_path: Path
) -> None:
    marker = tmp_path / "started"
    job_id = _submit(
        client, tenant, {"name": "chaos_sleep", "params": {"seconds": 120, "marker": str(marker)}}
    )
    wait_until(marker.exists, 60, "the long task to start")
    cancelled = client.post(f"/v1/jobs/{job_id}/cancel", headers=tenant.headers)
    assert cancelled.status_code == 200
    assert cancelled.json()["state"] == "cancelled"
    wait_until(
        lambda: _tasks(job_id)["analysis/chaos_sleep/tabular"][0] == "cancelled",
        30,
        "the task to be marked cancelled",
    )
    # The slot is free again long before the 120 s task would have ended.
    follow_up = _submit(client, tenant, {"name": "summary"})
    assert wait_for_job(client, tenant.headers, follow_up, timeout=60)["state"] == "succeeded"
    assert client.get(f"/v1/jobs/{job_id}", headers=tenant.headers).json()["state"] == ("cancelled")


def _compute_children(workers: Workers) -> list[int]:
    parent = workers.processes["compute"].pid
    children = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
    return [int(pid) for pid in children]


def test_worker_killed_mid_task_the_job_still_completes_once(
    client: TestClient,
    tenant: TenantFixture,
    worker_env: dict[str, str],
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    worker_env.update(
        {"CELERIAC_JOBS__RECONCILE_INTERVAL_SECONDS": "1", "CELERIAC_JOBS__STALL_SECONDS": "5"}
    )
    workers: Workers = request.getfixturevalue("workers")
    workers.start("beat", "beat")
    marker = tmp_path / "runs"
    job_id = _submit(
        client,
        tenant,
        {"name": "summary"},
        {"name": "chaos_sleep", "params": {"seconds": 3, "marker": str(marker)}},
    )
    wait_until(marker.exists, 60, "the task to start")
    for pid in _compute_children(workers):  # SIGKILL the prefork children mid-task
        os.kill(pid, signal.SIGKILL)

    job = wait_for_job(client, tenant.headers, job_id, timeout=90)
    assert job["state"] == "succeeded", job
    assert int(marker.read_text()) == 2  # ran again after the kill, and only once more
    state, attempts, _ = _tasks(job_id)["analysis/chaos_sleep/tabular"]
    assert (state, attempts) == ("succeeded", 2)
    results = client.get(f"/v1/jobs/{job_id}/results", headers=tenant.headers).json()
    assert results["analyses"]["chaos_sleep"]["tabular"] == {"slept": 3.0, "rows": len(RECORDS)}
    with get_engine().connect() as conn:
        completed = conn.execute(
            select(func.count())
            .select_from(UsageRecord)
            .where(UsageRecord.metric == "jobs.completed")
        ).scalar_one()
    assert completed == 1


def test_lost_broker_messages_are_redispatched_by_the_reconciler(
    client: TestClient,
    tenant: TenantFixture,
    worker_env: dict[str, str],
    api_settings: Settings,
    request: pytest.FixtureRequest,
) -> None:
    worker_env.update(
        {"CELERIAC_JOBS__RECONCILE_INTERVAL_SECONDS": "1", "CELERIAC_JOBS__STALL_SECONDS": "4"}
    )
    workers: Workers = request.getfixturevalue("workers")
    workers.start("beat", "beat")
    jobs = [
        _submit(
            client, tenant, {"name": "summary"}, {"name": "chaos_sleep", "params": {"seconds": 1}}
        )
        for _ in range(6)
    ]
    wait_until(
        lambda: any(
            client.get(f"/v1/jobs/{j}", headers=tenant.headers).json()["state"] == "running"
            for j in jobs
        ),
        60,
        "a job to run",
    )
    redis.Redis.from_url(api_settings.broker_url).flushdb()  # every queued message is gone
    started = time.monotonic()
    finals = [wait_for_job(client, tenant.headers, j, timeout=120)["state"] for j in jobs]
    assert finals == ["succeeded"] * len(jobs), finals
    assert time.monotonic() - started < 120
