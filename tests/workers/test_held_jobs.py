"""The running-job limit at the level of the flow steps (real PostgreSQL and Redis, no
workers): start holds a job over the limit, an end releases the oldest held job of the
highest band, and the reconciler neither fails a held job nor leaves one stranded."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from conftest import TenantFixture
from fastapi.testclient import TestClient
from sqlalchemy import update

from celeriac.platform.db import get_sessionmaker
from celeriac.platform.jobs import lifecycle, repository
from celeriac.platform.jobs.pipelines import register_plugins
from celeriac.platform.models import Job, JobState, utcnow
from celeriac.platform.queues import TaskName
from celeriac.workers.compute import discover
from celeriac.workers.flow import orchestration

from support import RecordingPublisher

PIPELINE = {"datasets": [{"name": "tabular"}], "analyzers": [{"name": "summary"}]}


@pytest.fixture
def limited(
    client: TestClient, make_tenant: Callable[..., TenantFixture], admin_headers: dict[str, str]
) -> TenantFixture:
    with get_sessionmaker().begin() as session:
        register_plugins(session, discover().plugin_infos())
    tenant = make_tenant("limited")
    client.put(
        f"/v1/admin/tenants/{tenant.id}/quotas", json={"max_running_jobs": 1}, headers=admin_headers
    )
    return tenant


def _submit(client: TestClient, tenant: TenantFixture, priority: str = "normal") -> str:
    answer = client.post(
        "/v1/jobs",
        headers=tenant.headers,
        json={"pipeline": PIPELINE, "records": [{"n": 1}], "priority": priority},
    )
    assert answer.status_code == 202, answer.text
    return str(answer.json()["id"])


def _job(job_id: str) -> Job:
    with get_sessionmaker()() as session:
        job = session.get(Job, uuid.UUID(job_id))
        assert job is not None
        return job


def _end(tenant: TenantFixture, job_id: str, send: RecordingPublisher) -> None:
    with get_sessionmaker().begin() as session:
        job = repository.load_job(session, tenant.id, job_id)
        assert job is not None
        publications = lifecycle.end_job(session, job, JobState.SUCCEEDED, source="test")
        assert publications is not None
        send.after_commit(session, publications)


def test_start_holds_over_the_limit_and_an_end_releases_by_band_then_age(
    client: TestClient, limited: TenantFixture
) -> None:
    first, low, normal = (
        _submit(client, limited),
        _submit(client, limited, "low"),
        _submit(client, limited),
    )
    send = RecordingPublisher()
    assert orchestration.start_job(limited.id, first, publisher=send) == "datasets"
    assert orchestration.start_job(limited.id, low, publisher=send) == orchestration.HELD
    assert orchestration.start_job(limited.id, normal, publisher=send) == orchestration.HELD
    assert _job(low).state is JobState.QUEUED
    assert _job(low).held_since is not None
    shown = client.get(f"/v1/jobs/{low}", headers=limited.headers).json()
    assert shown["state"] == "queued"
    assert shown["held_since"] is not None
    assert orchestration.start_job(limited.id, low, publisher=send) == orchestration.HELD
    # Only the first job's dataset tasks, published by its start.
    assert {(name, job) for name, job in send.messages} == {(TaskName.RUN_TASK, first)}

    _end(limited, first, send)
    assert send.messages[-1] == (TaskName.START_JOB, normal)  # normal band before low
    assert _job(normal).held_since is None
    assert _job(low).held_since is not None
    assert orchestration.start_job(limited.id, normal, publisher=send) == "datasets"
    assert orchestration.start_job(limited.id, low, publisher=send) == orchestration.HELD


def test_the_reconciler_keeps_held_jobs_and_releases_stranded_ones(
    client: TestClient, limited: TenantFixture, api_settings: Any
) -> None:
    first, second = _submit(client, limited), _submit(client, limited)
    send = RecordingPublisher()
    orchestration.start_job(limited.id, first, publisher=send)
    assert orchestration.start_job(limited.id, second, publisher=send) == orchestration.HELD
    long_ago = utcnow() - timedelta(hours=1)
    with get_sessionmaker().begin() as session:
        session.execute(update(Job).where(Job.id == uuid.UUID(second)).values(updated_at=long_ago))
    sent = RecordingPublisher()
    orchestration.reconcile(publisher=sent)
    assert (TaskName.START_JOB, second) not in sent.messages  # waiting, not stalled
    assert _job(second).dispatch_count == 0
    assert _job(second).state is JobState.QUEUED

    # The first job ends but its release is lost (say, a crash right after the commit).
    with get_sessionmaker().begin() as session:
        job = repository.load_job(session, limited.id, first)
        assert job is not None  # the end's compare-and-set alone, without its effects
        repository.end(
            session,
            job,
            JobState.SUCCEEDED,
            sources=[JobState.RUNNING],
            result_key=None,
            error=None,
        )
    assert orchestration.release_stranded(publisher=sent) == 1
    assert sent.messages[-1] == (TaskName.START_JOB, second)
    assert orchestration.start_job(limited.id, second, publisher=sent) == "datasets"
