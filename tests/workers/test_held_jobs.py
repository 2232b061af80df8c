"""The running-job limit at the level of the canvas steps (real PostgreSQL and Redis, no
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
from celeriac.platform.jobs.pipelines import register_plugins
from celeriac.platform.models import Job, JobState, utcnow
from celeriac.workers.canvas import reconcile, state, steps
from celeriac.workers.compute import discover

PIPELINE = {"datasets": [{"name": "tabular"}], "analyzers": [{"name": "summary"}]}


class Sent:
    """Collects what the steps publish instead of sending it."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, str]] = []

    def __call__(self, name: str, *, band: Any, tenant_slug: str, kwargs: dict[str, str]) -> str:
        self.messages.append((name, kwargs["job_id"]))
        return str(uuid.uuid4())


@pytest.fixture
def limited(
    client: TestClient, make_tenant: Callable[..., TenantFixture], admin_headers: dict[str, str]
) -> TenantFixture:
    with get_sessionmaker().begin() as session:
        register_plugins(session, discover().plugin_infos())
    tenant = make_tenant("limited")
    client.put(f"/v1/admin/tenants/{tenant.id}/quotas", json={"max_running_jobs": 1},
               headers=admin_headers)  # fmt: skip
    return tenant


def _submit(client: TestClient, tenant: TenantFixture, priority: str = "normal") -> str:
    answer = client.post("/v1/jobs", headers=tenant.headers, json={
        "pipeline": PIPELINE, "records": [{"n": 1}], "priority": priority})  # fmt: skip
    assert answer.status_code == 202, answer.text
    return str(answer.json()["id"])


def _job(job_id: str) -> Job:
    with get_sessionmaker()() as session:
        job = session.get(Job, uuid.UUID(job_id))
        assert job is not None
        return job


def _end(tenant: TenantFixture, job_id: str, send: Sent) -> None:
    with get_sessionmaker().begin() as session:
        job = state.load_job(session, tenant.id, job_id)
        assert job is not None and state.end_job(session, job, JobState.SUCCEEDED,
                                                 result_key=None, error=None)  # fmt: skip
        released = steps.release_held(session, job.tenant_id)
    steps.start_released(released, send)


def test_start_holds_over_the_limit_and_an_end_releases_by_band_then_age(
    client: TestClient, limited: TenantFixture
) -> None:
    first, low, normal = _submit(client, limited), _submit(client, limited, "low"), _submit(
        client, limited)  # fmt: skip
    send = Sent()
    assert steps.start_job(limited.id, first, send=send) == "datasets"
    assert steps.start_job(limited.id, low, send=send) == steps.HELD
    assert steps.start_job(limited.id, normal, send=send) == steps.HELD
    assert _job(low).state is JobState.QUEUED and _job(low).held_since is not None
    shown = client.get(f"/v1/jobs/{low}", headers=limited.headers).json()
    assert shown["state"] == "queued" and shown["held_since"] is not None
    assert steps.start_job(limited.id, low, send=send) == steps.HELD  # a duplicate: still held
    assert [name for name, _ in send.messages] == [steps.FAN_OUT]

    _end(limited, first, send)
    assert send.messages[-1] == (steps.START_JOB, normal)  # normal band before low
    assert _job(normal).held_since is None and _job(low).held_since is not None
    assert steps.start_job(limited.id, normal, send=send) == "datasets"
    assert steps.start_job(limited.id, low, send=send) == steps.HELD


def test_the_reconciler_keeps_held_jobs_and_releases_stranded_ones(
    client: TestClient, limited: TenantFixture, api_settings: Any
) -> None:
    first, second = _submit(client, limited), _submit(client, limited)
    send = Sent()
    steps.start_job(limited.id, first, send=send)
    assert steps.start_job(limited.id, second, send=send) == steps.HELD
    long_ago = utcnow() - timedelta(hours=1)
    with get_sessionmaker().begin() as session:
        session.execute(update(Job).where(Job.id == uuid.UUID(second))
                        .values(updated_at=long_ago))  # fmt: skip
    sent = Sent()
    reconcile.reconcile(send=sent)
    assert (steps.START_JOB, second) not in sent.messages  # waiting, not stalled
    assert _job(second).dispatch_count == 0 and _job(second).state is JobState.QUEUED

    # The first job ends but its release is lost (say, a crash right after the commit).
    with get_sessionmaker().begin() as session:
        job = state.load_job(session, limited.id, first)
        assert job is not None
        state.end_job(session, job, JobState.SUCCEEDED, result_key=None, error=None)
    assert reconcile.release_stranded(send=sent) == 1
    assert sent.messages[-1] == (steps.START_JOB, second)
    assert steps.start_job(limited.id, second, send=sent) == "datasets"
