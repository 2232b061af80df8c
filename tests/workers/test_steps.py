"""The canvas steps against real PostgreSQL and Redis, without workers: what a redelivered
or republished message may and may not do."""

from __future__ import annotations

import base64
import json
import uuid
from typing import Any

import pytest
import redis
from conftest import TenantFixture
from fastapi.testclient import TestClient
from sqlalchemy import select

from celeriac.platform.db import get_sessionmaker
from celeriac.platform.jobs.pipelines import register_plugins
from celeriac.platform.models import JobTask, TaskState
from celeriac.workers.canvas import steps
from celeriac.workers.compute import discover

RECORDS = [{"id": i, "amount": i * 1.5, "note": f"record {i}"} for i in range(4)]
PIPELINE = {"datasets": [{"name": "tabular"}, {"name": "text"}],
            "analyzers": [{"name": "summary"}]}  # fmt: skip


def _run_task_message_ids(broker_url: str, slug: str) -> list[str]:
    """Ids of the run_task messages published for the tenant (backlog and ready queue)."""
    client = redis.Redis.from_url(broker_url)
    ids = []
    for key in (f"compute.normal.{slug}", "compute"):
        for raw in client.lrange(key, 0, -1):
            message = json.loads(raw)
            if message["headers"]["task"] == steps.RUN_TASK:
                ids.append(message["headers"]["id"])
                json.loads(base64.b64decode(message["body"]))  # well-formed
    return ids


def _tasks(job_id: str) -> dict[str, JobTask]:
    with get_sessionmaker()() as session:
        rows = session.scalars(select(JobTask).where(JobTask.job_id == uuid.UUID(job_id)))
        return {t.plugin: t for t in rows}


@pytest.fixture
def started_job(
    client: TestClient, make_tenant: Any, redis_broker_url: str
) -> tuple[TenantFixture, str]:
    with get_sessionmaker().begin() as session:
        register_plugins(session, discover().plugin_infos())
    tenant = make_tenant("steps")
    answer = client.post(
        "/v1/jobs", json={"pipeline": PIPELINE, "records": RECORDS}, headers=tenant.headers
    )
    assert answer.status_code == 202, answer.text
    job_id = answer.json()["id"]
    assert steps.start_job(tenant.id, job_id) == "datasets"
    return tenant, job_id


def test_fan_out_publishes_each_task_under_the_id_stored_with_it(
    started_job: tuple[TenantFixture, str], redis_broker_url: str
) -> None:
    tenant, job_id = started_job
    assert steps.fan_out(tenant.id, job_id, "datasets") == 2
    tasks = _tasks(job_id)
    assert sorted(_run_task_message_ids(redis_broker_url, tenant.slug)) == sorted(
        t.celery_task_id for t in tasks.values()
    )


def test_a_republished_task_gets_a_new_message_id_so_the_old_message_cannot_run_it(
    started_job: tuple[TenantFixture, str], redis_broker_url: str
) -> None:
    tenant, job_id = started_job
    steps.fan_out(tenant.id, job_id, "datasets")
    first = {name: t.celery_task_id for name, t in _tasks(job_id).items()}
    tabular = _tasks(job_id)["tabular"]
    assert steps.claim(tenant.id, str(tabular.id), first["tabular"]) is not None

    # The reconciler re-dispatches the stage: the running task is left alone, the pending
    # one is published again under a new id.
    assert steps.fan_out(tenant.id, job_id, "datasets") == 1
    second = {name: t.celery_task_id for name, t in _tasks(job_id).items()}
    assert second["tabular"] == first["tabular"]
    assert second["text"] != first["text"]
    text = _tasks(job_id)["text"]
    assert steps.claim(tenant.id, str(text.id), second["text"]) is not None
    # The first message for "text" arrives late: a duplicate, not a redelivery.
    assert steps.claim(tenant.id, str(text.id), first["text"]) is None
    # A redelivery of the message that runs "tabular" (its worker died) may run it again.
    assert steps.claim(tenant.id, str(tabular.id), first["tabular"]) is not None


def test_the_last_sibling_to_finish_moves_the_job_on_once(
    started_job: tuple[TenantFixture, str], redis_broker_url: str
) -> None:
    tenant, job_id = started_job
    steps.fan_out(tenant.id, job_id, "datasets")
    claimed = [steps.claim(tenant.id, str(t.id), t.celery_task_id or "")
               for t in _tasks(job_id).values()]  # fmt: skip
    assert all(c is not None for c in claimed)
    first, second = (c for c in claimed if c is not None)
    assert steps.finish(tenant.id, job_id, first, TaskState.SUCCEEDED) is False
    assert steps.finish(tenant.id, job_id, second, TaskState.FAILED, "boom") is True
    assert steps.finish(tenant.id, job_id, second, TaskState.SUCCEEDED) is False  # redelivered
    states = {t.plugin: (t.state, t.error) for t in _tasks(job_id).values()}
    assert states[first.plugin] == (TaskState.SUCCEEDED, None)
    assert states[second.plugin] == (TaskState.FAILED, "boom")
