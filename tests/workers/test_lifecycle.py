"""A job's life as its owner (``celeriac.platform.jobs.lifecycle``) keeps it: suspension
holds a tenant's work on real workers, deletion ends its jobs cancelled, the reconciler
finds a lost job of a busy tenant by its own lack of progress, the orchestration and
distribution pools load no pandas, and a webhook delivery bills once."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
from conftest import TenantFixture
from fastapi.testclient import TestClient
from sqlalchemy import func, select, update

from celeriac.platform.db import get_engine, get_sessionmaker
from celeriac.platform.dispatch import SUSPENDED
from celeriac.platform.jobs.pipelines import register_plugins
from celeriac.platform.models import (
    Job,
    JobState,
    JobTask,
    TargetState,
    TaskState,
    UsageRecord,
    WebhookDelivery,
    WebhookMessage,
    WebhookTarget,
    utcnow,
)
from celeriac.platform.queues import TaskName
from celeriac.platform.settings import Settings
from celeriac.workers.compute import discover
from celeriac.workers.flow import orchestration

from support import RecordingPublisher
from worker_support import Workers, wait_for_job, wait_until

RECORDS = [{"id": i, "amount": i * 1.5} for i in range(8)]


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


def _state(job_id: str) -> JobState:
    with get_engine().connect() as conn:
        return JobState(conn.execute(select(Job.state).where(Job.id == job_id)).scalar_one())


def _task_states(job_id: str) -> dict[str, TaskState]:
    with get_engine().connect() as conn:
        rows = conn.execute(select(JobTask.task_key, JobTask.state).where(JobTask.job_id == job_id))
        return {key: TaskState(state) for key, state in rows}


def _set_status(
    client: TestClient, admin: dict[str, str], tenant: TenantFixture, status: str
) -> None:
    answer = client.patch(f"/v1/admin/tenants/{tenant.id}", json={"status": status}, headers=admin)
    assert answer.status_code == 200, answer.text


@pytest.fixture
def plugins(api_settings: Settings) -> None:
    with get_sessionmaker().begin() as session:
        register_plugins(session, discover().plugin_infos())


# --- suspension ----------------------------------------------------------------------


def test_suspension_holds_queued_work_lets_running_tasks_finish_and_resume_releases_it(
    client: TestClient,
    make_tenant: Callable[..., TenantFixture],
    admin_headers: dict[str, str],
    worker_env: dict[str, str],
    request: pytest.FixtureRequest,
    tmp_path: Path,
) -> None:
    # One compute slot: the tenant's long task holds it while its next job waits.
    worker_env["CELERIAC_WORKERS__COMPUTE_CONCURRENCY"] = "1"
    request.getfixturevalue("workers")
    paused, other = make_tenant("paused"), make_tenant("other")
    marker = tmp_path / "started"
    running = _submit(
        client, paused, {"name": "chaos_sleep", "params": {"seconds": 4, "marker": str(marker)}}
    )
    wait_until(marker.exists, 90, "the long task to start")
    waiting = _submit(client, paused, {"name": "summary"})
    wait_until(lambda: _task_states(waiting), 60, "the next job's tasks to be fanned out")

    _set_status(client, admin_headers, paused, "suspended")
    # The task that was running finishes; nothing of the tenant's is released after it.
    wait_until(
        lambda: _task_states(running).get("analysis/chaos_sleep/tabular") is TaskState.SUCCEEDED,
        60,
        "the running task to finish",
    )
    # Another tenant's job, sent after the slot freed, runs through every stage: the
    # dispatcher released work meanwhile, none of it the suspended tenant's.
    other_job = _submit(client, other, {"name": "summary"})
    assert wait_for_job(client, other.headers, other_job, timeout=90)["state"] == "succeeded"
    assert set(_task_states(waiting).values()) == {TaskState.PENDING}
    assert _state(running) is JobState.RUNNING  # its finalize waits in the tenant's queue

    _set_status(client, admin_headers, paused, "active")
    assert wait_for_job(client, paused.headers, running, timeout=90)["state"] == "succeeded"
    assert wait_for_job(client, paused.headers, waiting, timeout=90)["state"] == "succeeded"


def test_a_job_of_a_suspended_tenant_is_held_at_start_and_released_on_resume(
    client: TestClient,
    make_tenant: Callable[..., TenantFixture],
    admin_headers: dict[str, str],
    plugins: None,
    redis_broker_url: str,
) -> None:
    tenant = make_tenant("held")
    job_id = _submit(client, tenant, {"name": "summary"})
    _set_status(client, admin_headers, tenant, "suspended")
    broker = redis.Redis.from_url(redis_broker_url)
    assert broker.sismember(SUSPENDED, "held")

    recorder = RecordingPublisher()
    assert orchestration.start_job(tenant.id, job_id, publisher=recorder) == orchestration.HELD
    assert recorder.messages == []
    assert _state(job_id) is JobState.QUEUED

    queue = f"orchestration.normal.{tenant.slug}"
    before = broker.llen(queue)
    _set_status(client, admin_headers, tenant, "active")
    assert not broker.sismember(SUSPENDED, "held")
    # Resuming publishes the held job's start again (into the tenant's queue).
    assert broker.llen(queue) + broker.llen("orchestration") > before
    assert orchestration.start_job(tenant.id, job_id, publisher=recorder) == "datasets"


def test_beat_rebuilds_the_suspended_set_after_a_redis_restart(
    client: TestClient,
    make_tenant: Callable[..., TenantFixture],
    admin_headers: dict[str, str],
    redis_broker_url: str,
) -> None:
    make_tenant("active-one")
    gone = make_tenant("paused-one")
    _set_status(client, admin_headers, gone, "suspended")
    broker = redis.Redis.from_url(redis_broker_url)
    broker.flushdb()  # what a restart without persistence leaves
    broker.sadd(SUSPENDED, "active-one")  # and a stale entry
    assert orchestration.sync_suspended() == 1
    assert {m.decode() for m in broker.smembers(SUSPENDED)} == {"paused-one"}


# --- deletion ------------------------------------------------------------------------


def test_deleting_a_tenant_ends_its_queued_jobs_cancelled_with_their_events(
    client: TestClient,
    make_tenant: Callable[..., TenantFixture],
    admin_headers: dict[str, str],
    plugins: None,
) -> None:
    tenant, kept = make_tenant("leaving"), make_tenant("staying")
    target = client.post(
        "/v1/webhooks",
        headers=tenant.headers,
        json={"url": "http://127.0.0.1:9/hook", "event_types": ["job.*"]},
    )
    assert target.status_code == 201, target.text
    jobs = [_submit(client, tenant, {"name": "summary"}) for _ in range(3)]
    other = _submit(client, kept, {"name": "summary"})

    deleted = client.delete(f"/v1/admin/tenants/{tenant.id}", headers=admin_headers)
    assert deleted.status_code == 200, deleted.text
    assert [_state(j) for j in jobs] == [JobState.CANCELLED] * 3
    assert _state(other) is JobState.QUEUED
    with get_engine().connect() as conn:
        events = conn.execute(
            select(WebhookMessage.event_type, WebhookMessage.event_key).where(
                WebhookMessage.tenant_id == uuid.UUID(tenant.id)
            )
        ).all()
        completed = conn.execute(
            select(func.count())
            .select_from(UsageRecord)
            .where(UsageRecord.tenant_id == uuid.UUID(tenant.id))
            .where(UsageRecord.metric == "jobs.completed")
        ).scalar_one()
        deliveries = conn.execute(
            select(func.count())
            .select_from(WebhookDelivery)
            .where(WebhookDelivery.tenant_id == uuid.UUID(tenant.id))
        ).scalar_one()
        targets = conn.execute(
            select(WebhookTarget.state, WebhookTarget.disabled_reason).where(
                WebhookTarget.tenant_id == uuid.UUID(tenant.id)
            )
        ).all()
    assert sorted(events) == sorted(("job.cancelled", f"job:{j}:ended") for j in jobs)
    assert completed == 3
    # Nothing more goes to a deleted tenant's receivers (nor is billed): its targets are
    # disabled in the deleting transaction, so the cancellations have no delivery.
    assert [tuple(t) for t in targets] == [(TargetState.DISABLED, "the tenant was deleted")]
    assert deliveries == 0
    # A start_job still queued for one of them finds it ended and does nothing.
    recorder = RecordingPublisher()
    assert orchestration.start_job(tenant.id, jobs[0], publisher=recorder) is None
    assert recorder.messages == []


# --- the reconciler ------------------------------------------------------------------


def test_a_lost_job_of_a_busy_tenant_is_found_by_its_own_lack_of_progress(
    client: TestClient,
    make_tenant: Callable[..., TenantFixture],
    plugins: None,
    redis_broker_url: str,
    api_settings: Settings,
) -> None:
    tenant = make_tenant("busy")
    waiting = [_submit(client, tenant, {"name": "summary"}) for _ in range(5)]
    lost = _submit(client, tenant, {"name": "summary"})
    broker = redis.Redis.from_url(redis_broker_url)
    # The lost job's start_job message is gone (a worker died with it, say); the others'
    # wait in the tenant's queue (no worker runs here) or the pool's ready queue.
    for queue in (f"orchestration.normal.{tenant.slug}", "orchestration"):
        for raw in broker.lrange(queue, 0, -1):
            if lost.encode() in raw:
                broker.lrem(queue, 0, raw)
    long_ago = utcnow() - timedelta(seconds=api_settings.jobs.stall_seconds + 60)
    with get_sessionmaker().begin() as session:
        session.execute(update(Job).values(updated_at=long_ago))

    recorder = RecordingPublisher()
    assert orchestration.reconcile(publisher=recorder) == 1
    assert recorder.messages == [(TaskName.START_JOB.value, lost)]
    with get_engine().connect() as conn:
        counts = dict(conn.execute(select(Job.id, Job.dispatch_count)).all())
    assert counts[uuid.UUID(lost)] == 1
    assert all(counts[uuid.UUID(j)] == 0 for j in waiting)


def test_a_job_lost_too_often_fails_from_queued_with_its_end_effects(
    client: TestClient,
    make_tenant: Callable[..., TenantFixture],
    plugins: None,
    redis_broker_url: str,
    api_settings: Settings,
) -> None:
    tenant = make_tenant("given-up")
    job_id = _submit(client, tenant, {"name": "summary"})
    redis.Redis.from_url(redis_broker_url).flushdb()
    long_ago = utcnow() - timedelta(seconds=api_settings.jobs.stall_seconds + 60)
    with get_sessionmaker().begin() as session:
        session.execute(
            update(Job).values(updated_at=long_ago, dispatch_count=api_settings.jobs.max_dispatches)
        )
    assert orchestration.reconcile(publisher=RecordingPublisher()) == 1
    assert _state(job_id) is JobState.FAILED  # queued -> failed, directly
    with get_engine().connect() as conn:
        event = conn.execute(
            select(WebhookMessage.event_type).where(
                WebhookMessage.event_key == f"job:{job_id}:ended"
            )
        ).scalar_one_or_none()
        completed = conn.execute(
            select(UsageRecord.properties).where(UsageRecord.id == f"job_{job_id}:jobs.completed")
        ).scalar_one()
    assert event == "job.failed"
    assert completed["state"] == "failed"


# --- pools -----------------------------------------------------------------------------


def test_orchestration_and_distribution_workers_load_no_pandas(workers: Workers) -> None:
    """The pools that compute nothing import nothing that computes: pandas' compiled
    extensions are not mapped into their processes (the compute pool's are)."""

    def pandas_loaded(pool: str) -> bool:
        pid = workers.processes[pool].pid
        return "/pandas/_libs/" in Path(f"/proc/{pid}/maps").read_text()

    assert pandas_loaded("compute")
    assert not pandas_loaded("orchestration")
    assert not pandas_loaded("distribution")


def test_deleting_a_tenant_on_real_workers_cancels_running_and_queued_jobs(
    client: TestClient,
    make_tenant: Callable[..., TenantFixture],
    admin_headers: dict[str, str],
    worker_env: dict[str, str],
    request: pytest.FixtureRequest,
    tmp_path: Path,
) -> None:
    worker_env["CELERIAC_WORKERS__COMPUTE_CONCURRENCY"] = "1"
    running_workers: Workers = request.getfixturevalue("workers")
    tenant, other = make_tenant("doomed"), make_tenant("survivor")
    marker = tmp_path / "started"
    running = _submit(
        client, tenant, {"name": "chaos_sleep", "params": {"seconds": 60, "marker": str(marker)}}
    )
    wait_until(marker.exists, 90, "the long task to start")
    queued = _submit(client, tenant, {"name": "summary"})

    deleted = client.delete(f"/v1/admin/tenants/{tenant.id}", headers=admin_headers)
    assert deleted.status_code == 200, deleted.text
    assert (_state(running), _state(queued)) == (JobState.CANCELLED, JobState.CANCELLED)
    # The orchestrator revokes the running task: the slot is free long before 60 s.
    wait_until(
        lambda: _task_states(running).get("analysis/chaos_sleep/tabular") is TaskState.CANCELLED,
        60,
        "the running task to be cancelled",
    )

    # The revoked task's end is logged (the ELK task line); no signal handler failed.
    def revoked_line() -> bool:
        for line in running_workers.log("compute").splitlines():
            if line.startswith("{") and '"task finished"' in line:
                entry = json.loads(line)
                if entry.get("state") == "revoked" and entry.get("job_id") == str(running):
                    return True
        return False

    wait_until(revoked_line, 60, "the revoked task's log line")
    assert "Signal handler" not in running_workers.log("compute")
    follow_up = _submit(client, other, {"name": "summary"})
    assert wait_for_job(client, other.headers, follow_up, timeout=90)["state"] == "succeeded"
    assert _state(running) is JobState.CANCELLED
    assert _state(queued) is JobState.CANCELLED


def test_a_job_waiting_on_a_running_tasks_lease_is_not_failed_by_the_reconciler(
    client: TestClient,
    make_tenant: Callable[..., TenantFixture],
    plugins: None,
    redis_broker_url: str,
    api_settings: Settings,
) -> None:
    """A task left running by an outage (its message lost with a broker restart, or its
    outcome unrecorded while PostgreSQL was away) is due again when its lease ends: until
    then the reconciler re-dispatches the job without counting it towards the give-up."""
    tenant = make_tenant("leased")
    job_id = _submit(client, tenant, {"name": "summary"})
    recorder = RecordingPublisher()
    assert orchestration.start_job(tenant.id, job_id, publisher=recorder) == "datasets"
    assert recorder.messages == [(TaskName.RUN_TASK.value, job_id)]  # start published it
    redis.Redis.from_url(redis_broker_url).flushdb()  # the run_task message is gone
    long_ago = utcnow() - timedelta(seconds=api_settings.jobs.stall_seconds + 60)
    with get_sessionmaker().begin() as session:
        session.execute(update(JobTask).values(state=TaskState.RUNNING, started_at=utcnow()))
        session.execute(
            update(Job).values(updated_at=long_ago, dispatch_count=api_settings.jobs.max_dispatches)
        )
    assert orchestration.reconcile(publisher=recorder) == 1
    assert _state(job_id) is JobState.RUNNING  # waiting on the lease, not given up
    assert recorder.messages[-1] == (TaskName.FAN_OUT.value, job_id)

    # Once the lease has ended, a job still lost this often is given up.
    lease_over = utcnow() - timedelta(seconds=api_settings.workers.compute_hard_time_limit + 60)
    with get_sessionmaker().begin() as session:
        session.execute(update(JobTask).values(started_at=lease_over))
        session.execute(update(Job).values(updated_at=long_ago))
    assert orchestration.reconcile(publisher=recorder) == 1
    assert _state(job_id) is JobState.FAILED
