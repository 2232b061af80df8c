"""The flow steps against real PostgreSQL and Redis, without workers: what a redelivered
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
from celeriac.platform.models import Job, JobStage, JobState, JobTask, TaskState
from celeriac.platform.queues import TaskName
from celeriac.platform.settings import get_settings
from celeriac.platform.tenant_data import tenant_blobs
from celeriac.workers.compute import analyze_dataset, analyze_slice, build_dataset, discover
from celeriac.workers.flow import compute, distribution, orchestration, plan

RECORDS = [{"id": i, "amount": i * 1.5, "note": f"record {i}"} for i in range(4)]
PIPELINE = {"datasets": [{"name": "tabular"}, {"name": "text"}], "analyzers": [{"name": "summary"}]}


def _run_task_message_ids(broker_url: str, slug: str) -> list[str]:
    """Ids of the run_task messages published for the tenant (backlog and ready queue)."""
    client = redis.Redis.from_url(broker_url)
    ids = []
    for key in (f"compute.normal.{slug}", "compute"):
        for raw in client.lrange(key, 0, -1):
            message = json.loads(raw)
            if message["headers"]["task"] == TaskName.RUN_TASK:
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
    assert orchestration.start_job(tenant.id, job_id) == "datasets"
    return tenant, job_id


def test_start_publishes_each_task_under_the_id_stored_with_it(
    started_job: tuple[TenantFixture, str], redis_broker_url: str
) -> None:
    tenant, job_id = started_job  # start_job inserted and published the stage's tasks
    tasks = _tasks(job_id)
    assert len(tasks) == 2
    assert sorted(_run_task_message_ids(redis_broker_url, tenant.slug)) == sorted(
        t.celery_task_id for t in tasks.values()
    )


def test_a_republished_task_gets_a_new_message_id_so_the_old_message_cannot_run_it(
    started_job: tuple[TenantFixture, str], redis_broker_url: str
) -> None:
    tenant, job_id = started_job
    first = {name: t.celery_task_id for name, t in _tasks(job_id).items()}
    tabular = _tasks(job_id)["tabular"]
    assert compute.claim(tenant.id, str(tabular.id), first["tabular"]) is not None

    # The reconciler re-dispatches the stage: the running task is left alone, the pending
    # one is published again under a new id.
    assert distribution.fan_out(tenant.id, job_id, "datasets") == 1
    second = {name: t.celery_task_id for name, t in _tasks(job_id).items()}
    assert second["tabular"] == first["tabular"]
    assert second["text"] != first["text"]
    text = _tasks(job_id)["text"]
    assert compute.claim(tenant.id, str(text.id), second["text"]) is not None
    # The first message for "text" arrives late: a duplicate, not a redelivery.
    assert compute.claim(tenant.id, str(text.id), first["text"]) is None
    # A redelivery of the message that runs "tabular" (its worker died) may run it again.
    assert compute.claim(tenant.id, str(tabular.id), first["tabular"]) is not None


def test_the_last_sibling_to_finish_moves_the_job_on_once(
    started_job: tuple[TenantFixture, str], redis_broker_url: str
) -> None:
    tenant, job_id = started_job
    claimed = [
        compute.claim(tenant.id, str(t.id), t.celery_task_id or "") for t in _tasks(job_id).values()
    ]
    assert all(c is not None for c in claimed)
    first, second = (c for c in claimed if c is not None)
    assert compute.finish(tenant.id, job_id, first, TaskState.SUCCEEDED) is False
    assert compute.finish(tenant.id, job_id, second, TaskState.FAILED, "boom") is True
    assert compute.finish(tenant.id, job_id, second, TaskState.SUCCEEDED) is False  # redelivered
    states = {t.plugin: (t.state, t.error) for t in _tasks(job_id).values()}
    assert states[first.plugin] == (TaskState.SUCCEEDED, None)
    assert states[second.plugin] == (TaskState.FAILED, "boom")


# --- a row-wise analyzer in slices ------------------------------------------------------

TEXTS = [
    "Great product, I love it!",
    "Terrible. Never again.",
    None,
    "It is okay, I guess.",
    "Not bad at all :)",
    "The worst support ever!!!",
    "fine",
    "Absolutely wonderful.",
    "meh",
]
SLICED = {
    "datasets": [{"name": "text"}],
    "analyzers": [
        {"name": "sentiment", "params": {"include_records": False}},
        {"name": "keywords"},
    ],
}


@pytest.fixture
def sliced_job(
    client: TestClient, make_tenant: Any, redis_broker_url: str, monkeypatch: pytest.MonkeyPatch
) -> tuple[TenantFixture, str]:
    """9 records in 3 chunks and 3 slices, through its datasets stage."""
    monkeypatch.setenv("CELERIAC_JOBS__CHUNK_RECORDS", "4")
    monkeypatch.setenv("CELERIAC_JOBS__SLICE_RECORDS", "4")
    get_settings.cache_clear()
    with get_sessionmaker().begin() as session:
        register_plugins(session, discover().plugin_infos())
    tenant = make_tenant("slices")
    records = [{"id": i, "text": text} for i, text in enumerate(TEXTS)]
    answer = client.post(
        "/v1/jobs", json={"pipeline": SLICED, "records": records}, headers=tenant.headers
    )
    assert answer.status_code == 202, answer.text
    job_id = answer.json()["id"]
    orchestration.start_job(tenant.id, job_id)
    assert len(_by_key(job_id)) == 3
    for task in _by_key(job_id).values():
        assert _run(tenant, job_id, task) is not None
    assert _job(job_id).stage is JobStage.ANALYSIS
    return tenant, job_id


def _by_key(job_id: str) -> dict[str, JobTask]:
    with get_sessionmaker()() as session:
        rows = session.scalars(select(JobTask).where(JobTask.job_id == uuid.UUID(job_id)))
        return {t.task_key: t for t in rows}


def _job(job_id: str) -> Job:
    with get_sessionmaker()() as session:
        job = session.get(Job, uuid.UUID(job_id))
        assert job is not None
        return job


def _run(
    tenant: TenantFixture, job_id: str, task: JobTask, fail: str | None = None
) -> compute.Claimed | None:
    """What run_task does: claim, compute (or fail with ``fail``), finish."""
    claimed = compute.claim(tenant.id, str(task.id), task.celery_task_id or "")
    if claimed is None:
        return None
    outcome, error = TaskState.SUCCEEDED, fail
    if fail is None:
        try:
            compute.compute(tenant.id, job_id, claimed)
        except Exception as exc:
            outcome, error = TaskState.FAILED, str(exc)
    else:
        outcome = TaskState.FAILED
    compute.finish(tenant.id, job_id, claimed, outcome, error)
    return claimed


def _whole_sentiment(params: dict[str, Any]) -> dict[str, Any]:
    dataset = build_dataset("text", [[{"id": i, "text": t} for i, t in enumerate(TEXTS)]])
    return analyze_dataset("sentiment", dataset, params)


def test_slices_run_first_and_the_last_one_publishes_the_merge(
    sliced_job: tuple[TenantFixture, str], redis_broker_url: str
) -> None:
    tenant, job_id = sliced_job
    slices = [f"analysis/sentiment/text/{i:05d}" for i in range(3)]
    merge, keywords = "analysis/sentiment/text", "analysis/keywords/text"
    # Whole analyses first, then the slices that fill in behind them, then the merge.
    assert [p.key for p in plan.planned(_job(job_id), JobStage.ANALYSIS)] == [
        keywords,
        *slices,
        merge,
    ]
    # The last dataset task's join published the stage: 3 slices and keywords.
    tasks = _by_key(job_id)
    published = set(_run_task_message_ids(redis_broker_url, tenant.slug))
    assert {tasks[k].celery_task_id for k in (*slices, keywords)} <= published
    assert tasks[merge].celery_task_id not in published

    # A merge message before its slices end (a republish, say) leaves it pending.
    assert compute.claim(tenant.id, str(tasks[merge].id), str(uuid.uuid4())) is None
    assert _by_key(job_id)[merge].state is TaskState.PENDING
    for key in slices[:2]:
        assert _run(tenant, job_id, tasks[key]) is not None
    assert set(_run_task_message_ids(redis_broker_url, tenant.slug)) == published
    assert _run(tenant, job_id, tasks[slices[2]]) is not None
    merge_task = _by_key(job_id)[merge]
    assert set(_run_task_message_ids(redis_broker_url, tenant.slug)) - published == {
        merge_task.celery_task_id
    }
    assert _run(tenant, job_id, merge_task) is not None
    assert _run(tenant, job_id, tasks[keywords]) is not None
    assert _job(job_id).stage is JobStage.FINALIZE

    assert distribution.finalize(tenant.id, job_id) is JobState.SUCCEEDED
    document = json.loads(tenant_blobs().get(tenant.id, _job(job_id).result_key or ""))
    assert set(document["analyses"]) == {"sentiment", "keywords"}
    # Slices kept their records (for an exact mean); the merge left them out, as asked.
    assert document["analyses"]["sentiment"]["text"] == _whole_sentiment({"include_records": False})


def test_a_failed_slice_fails_the_merge_and_the_job_is_partial(
    sliced_job: tuple[TenantFixture, str],
) -> None:
    tenant, job_id = sliced_job
    tasks = _by_key(job_id)
    _run(tenant, job_id, tasks["analysis/sentiment/text/00001"], fail="boom")
    for key in (
        "analysis/sentiment/text/00000",
        "analysis/sentiment/text/00002",
        "analysis/keywords/text",
    ):
        _run(tenant, job_id, tasks[key])
    merged = _by_key(job_id)["analysis/sentiment/text"]
    assert _run(tenant, job_id, merged) is not None
    merged = _by_key(job_id)["analysis/sentiment/text"]
    assert merged.state is TaskState.FAILED
    assert "nothing to merge: slice 1 failed: boom" in (merged.error or "")

    assert distribution.finalize(tenant.id, job_id) is JobState.PARTIAL
    document = json.loads(tenant_blobs().get(tenant.id, _job(job_id).result_key or ""))
    assert set(document["analyses"]) == {"keywords"}
    assert {(e["plugin"], e["chunk"]) for e in document["errors"]} == {
        ("sentiment", 1),
        ("sentiment", None),
    }


def test_a_lost_merge_message_is_published_again_by_the_next_fan_out(
    sliced_job: tuple[TenantFixture, str], redis_broker_url: str
) -> None:
    tenant, job_id = sliced_job
    for key, task in _by_key(job_id).items():
        if key.startswith("analysis/sentiment/text/"):
            _run(tenant, job_id, task)
    lost = _by_key(job_id)["analysis/sentiment/text"].celery_task_id
    redis.Redis.from_url(redis_broker_url).flushdb()  # the merge's message is gone

    assert distribution.fan_out(tenant.id, job_id, "analysis") == 2  # the merge and keywords
    merge = _by_key(job_id)["analysis/sentiment/text"]
    assert merge.celery_task_id != lost
    assert merge.celery_task_id in _run_task_message_ids(redis_broker_url, tenant.slug)
    assert _run(tenant, job_id, merge) is not None
    assert _by_key(job_id)["analysis/sentiment/text"].state is TaskState.SUCCEEDED


def _slice_result(tenant: TenantFixture, job_id: str, index: int) -> dict[str, Any]:
    claimed = compute.claim(
        tenant.id,
        str(_by_key(job_id)[f"analysis/sentiment/text/{index:05d}"].id),
        str(uuid.uuid4()),
    )
    assert claimed is not None
    compute.compute(tenant.id, job_id, claimed)
    result: dict[str, Any] = json.loads(tenant_blobs().get(tenant.id, claimed.output_key))
    return result


def test_a_slice_reads_only_the_partials_of_its_rows(
    sliced_job: tuple[TenantFixture, str],
) -> None:
    """9 records in chunks of 4 (4, 4, 1), 3 slices of rows [0, 3), [3, 6), [6, 9): with the
    text partial of chunk 2 gone, the slices of chunks 0 and 0-1 still run, and give what
    the slice of the whole dataset gives; the slice that needs chunk 2 cannot."""
    tenant, job_id = sliced_job
    job = _job(job_id)
    whole = build_dataset("text", [[{"id": i, "text": t} for i, t in enumerate(TEXTS)]])
    expected = [
        analyze_slice("sentiment", whole.iloc[start:end], {"include_records": False})
        for start, end in (plan.slice_rows(9, i, 3) for i in range(3))
    ]
    tenant_blobs().delete(tenant.id, f"{plan.dataset_prefix(job, 'text')}00002.parquet")
    assert _slice_result(tenant, job_id, 0) == expected[0]
    assert _slice_result(tenant, job_id, 1) == expected[1]
    with pytest.raises(compute.TransientError, match="blob missing"):
        _slice_result(tenant, job_id, 2)


def test_a_slice_of_a_job_without_its_chunk_layout_reads_the_whole_dataset(
    sliced_job: tuple[TenantFixture, str],
) -> None:
    """A job accepted before ``chunk_records`` was recorded: its slices combine every
    partial, as they did, so slice 0 too needs chunk 2's."""
    tenant, job_id = sliced_job
    job = _job(job_id)
    with get_sessionmaker().begin() as session:
        row = session.get(Job, job.id)
        assert row is not None
        row.checkpoints = {"payload": {"chunks": 3}, "slices": 3}
    tenant_blobs().delete(tenant.id, f"{plan.dataset_prefix(job, 'text')}00002.parquet")
    with pytest.raises(compute.TransientError, match="blob missing"):
        _slice_result(tenant, job_id, 0)
