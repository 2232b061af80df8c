"""Job submission, status, results and cancellation through the API, on real services."""

from __future__ import annotations

import asyncio
import base64
import json
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
import redis
from conftest import TenantFixture, clear_process_caches
from fastapi.testclient import TestClient
from sqlalchemy import func, select, update

from celeriac.platform.api.app import create_app
from celeriac.platform.db import get_engine, get_sessionmaker
from celeriac.platform.errors import ValidationFailed
from celeriac.platform.jobs.ingest import Submission, _Waiting, ingest_writer, write_batch
from celeriac.platform.jobs.payload import from_records
from celeriac.platform.jobs.pipelines import (
    ANALYZER,
    DATASET,
    PluginInfo,
    load_plugins,
    register_plugins,
    resolve_against,
)
from celeriac.platform.models import (
    Job,
    JobStage,
    JobState,
    JobTask,
    Priority,
    TaskState,
    UsageRecord,
)
from celeriac.platform.settings import Settings, get_settings
from celeriac.platform.storage import blob_store_from_settings, job_blob_key
from celeriac.platform.tenant_data import tenant_blobs

PLUGINS = [
    PluginInfo(
        DATASET,
        "tabular",
        "1.0",
        {
            "type": "object",
            "additionalProperties": False,
            "properties": {"max_columns": {"type": "integer", "minimum": 1}},
        },
        produces="table",
    ),
    PluginInfo(DATASET, "text", "1.0", {"type": "object"}, produces="text"),
    PluginInfo(ANALYZER, "summary", "1.0", {"type": "object"}, accepts=("table",)),
    PluginInfo(
        ANALYZER,
        "anomalies",
        "1.2",
        {"type": "object", "properties": {"threshold": {"type": "number", "exclusiveMinimum": 0}}},
        accepts=("table",),
    ),
    PluginInfo(ANALYZER, "sentiment", "1.0", {"type": "object"}, accepts=("text",)),
    PluginInfo(ANALYZER, "keywords", "1.0", {"type": "object"}, accepts=("text",)),
]
SPEC = {"datasets": [{"name": "tabular"}], "analyzers": [{"name": "summary"}]}
RECORDS = [{"id": i, "amount": i * 1.5, "note": f"record {i}"} for i in range(5)]


@pytest.fixture(autouse=True)
def _registry(api_settings: Settings) -> None:
    with get_sessionmaker().begin() as session:
        register_plugins(session, PLUGINS)


@pytest.fixture
def tenant(make_tenant: Callable[..., TenantFixture]) -> TenantFixture:
    return make_tenant("jobs-tenant")


def _jobs() -> list[Job]:
    with get_sessionmaker()() as session:
        return list(session.scalars(select(Job)))


def _queued_messages(broker_url: str, queue: str) -> list[Any]:
    """Messages published for ``queue``: still in the tenant's backlog, or already
    released by the fair dispatcher into the pool's ready queue."""
    client = redis.Redis.from_url(broker_url)
    pool = queue.split(".", maxsplit=1)[0]
    found = []
    for key in (queue, pool):
        for raw in client.lrange(key, 0, -1):
            message = json.loads(raw)
            if message["properties"]["delivery_info"]["routing_key"] == queue:
                found.append(json.loads(base64.b64decode(message["body"])))
    return found


def test_inline_job_is_stored_encrypted_and_published_by_id(
    client: TestClient, tenant: TenantFixture, redis_broker_url: str, api_settings: Settings
) -> None:
    answer = client.post(
        "/v1/jobs",
        json={
            "pipeline": SPEC,
            "records": RECORDS,
            "priority": "high",
            "metadata": {"source": "test"},
        },
        headers=tenant.headers,
    )
    assert answer.status_code == 202, answer.text
    body = answer.json()
    assert answer.headers["Location"] == f"/v1/jobs/{body['id']}" == body["status_url"]
    assert (body["state"], body["priority"], body["record_count"]) == ("queued", "high", 5)

    (job,) = _jobs()
    assert job.pipeline["analyzers"][0] == {
        "name": "summary",
        "version": "1.0",
        "params": {},
        "produces": None,
        "accepts": ["table"],
        "rowwise": False,
    }
    assert job.checkpoints == {"payload": {"chunks": 1, "chunk_records": 5000}, "slices": 1}
    stored = tenant_blobs().get(tenant.id, job.payload_key + "00000.ndjson")
    assert [json.loads(line) for line in stored.splitlines()] == RECORDS
    on_disk = blob_store_from_settings(api_settings).get(job.payload_key + "00000.ndjson")
    assert b"record 3" not in on_disk
    assert b"amount" not in on_disk

    (message,) = _queued_messages(redis_broker_url, f"orchestration.high.{tenant.slug}")
    args, kwargs, _ = message
    assert args == []
    assert kwargs == {"tenant_id": tenant.id, "job_id": body["id"]}


@pytest.mark.parametrize(
    ("filename", "content_type", "content"),
    [
        ("data.csv", "text/csv", b"id,amount\n1,2.5\n2,3.5\n3,4\n"),
        ("data.ndjson", "application/x-ndjson", b'{"id": 1}\n{"id": 2}\n\n{"id": 3}\n'),
    ],
)
def test_file_upload_jobs(
    client: TestClient, tenant: TenantFixture, filename: str, content_type: str, content: bytes
) -> None:
    answer = client.post(
        "/v1/jobs",
        headers=tenant.headers,
        data={"pipeline": "tabular-summary", "priority": "low", "metadata": '{"batch": 7}'},
        files={"file": (filename, content, content_type)},
    )
    assert answer.status_code == 202, answer.text
    assert answer.json()["record_count"] == 3
    (job,) = _jobs()
    assert job.job_metadata == {"batch": 7}
    assert job.pipeline["name"] == "tabular-summary"


@pytest.mark.parametrize(
    ("body", "status", "pointer"),
    [
        ({"pipeline": "nope", "records": RECORDS}, 422, "#/body/pipeline"),
        (
            {
                "pipeline": {"datasets": [{"name": "tabular"}], "analyzers": [{"name": "nope"}]},
                "records": RECORDS,
            },
            422,
            "#/body/pipeline/analyzers/0/name",
        ),
        (
            {
                "pipeline": {
                    "datasets": [{"name": "tabular"}],
                    "analyzers": [{"name": "anomalies", "params": {"threshold": -1}}],
                },
                "records": RECORDS,
            },
            422,
            "#/body/pipeline/analyzers/0/params/threshold",
        ),
        (
            {
                "pipeline": {
                    "datasets": [{"name": "tabular", "params": {"colour": 1}}],
                    "analyzers": [{"name": "summary"}],
                },
                "records": RECORDS,
            },
            422,
            "#/body/pipeline/datasets/0/params",
        ),
        (
            {
                "pipeline": {
                    "datasets": [{"name": "tabular"}],
                    "analyzers": [{"name": "sentiment"}],
                },
                "records": RECORDS,
            },
            422,
            "#/body/pipeline/analyzers/0/name",
        ),
        ({"pipeline": SPEC, "records": []}, 422, "#/body/records"),
        ({"pipeline": SPEC, "records": [1, 2]}, 422, "#/body/records/0"),
        ({"pipeline": SPEC, "records": RECORDS, "priority": "urgent"}, 422, "#/body/priority"),
        ({"pipeline": SPEC, "records": RECORDS, "extra": 1}, 422, "#/body/extra"),
        ({"records": RECORDS}, 422, "#/body/pipeline"),
        # PostgreSQL's JSONB refuses NUL: caught as the client's error, not a failed store
        (
            {"pipeline": SPEC, "records": RECORDS, "metadata": {"k": "a\u0000b"}},
            422,
            "#/body/metadata",
        ),
        (
            {
                "pipeline": {
                    "datasets": [{"name": "tabular", "params": {"x": ["\u0000"]}}],
                    "analyzers": [{"name": "summary"}],
                },
                "records": RECORDS,
            },
            422,
            "#/body/pipeline/PipelineSpec/datasets/0/params",
        ),
    ],
)
def test_invalid_jobs_are_422_with_pointers_and_leave_nothing(
    client: TestClient,
    tenant: TenantFixture,
    api_settings: Settings,
    body: dict[str, Any],
    status: int,
    pointer: str,
) -> None:
    answer = client.post("/v1/jobs", json=body, headers=tenant.headers)
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"] == "application/problem+json"
    assert pointer in [e["pointer"] for e in answer.json()["errors"]]
    assert _jobs() == []
    assert [p for p in api_settings.blob.local_dir.rglob("*") if p.is_file()] == []


@pytest.mark.parametrize(
    ("content", "detail"),
    [(b"id,amount\n1,2,3\n", "more values"), (b"", "no header"), (b"\xff\xfe", "UTF-8")],
)
def test_bad_files_are_422(
    client: TestClient, tenant: TenantFixture, content: bytes, detail: str
) -> None:
    answer = client.post(
        "/v1/jobs",
        headers=tenant.headers,
        data={"pipeline": "full"},
        files={"file": ("x.csv", content, "text/csv")},
    )
    assert answer.status_code == 422
    assert detail in answer.json()["detail"]
    ndjson = ("x.ndjson", b'{"a":1}\n[1]\n', "application/x-ndjson")
    bad_json = client.post(
        "/v1/jobs", headers=tenant.headers, data={"pipeline": "full"}, files={"file": ndjson}
    )
    assert bad_json.json()["errors"][0]["pointer"] == "#/body/file/2"
    other = client.post(
        "/v1/jobs",
        headers=tenant.headers,
        data={"pipeline": "full"},
        files={"file": ("x.xml", b"<a/>", "application/xml")},
    )
    assert other.status_code == 422
    assert _jobs() == []


def _stored_files(api_settings: Settings) -> list[Any]:
    return [p for p in api_settings.blob.local_dir.rglob("*") if p.is_file()]


@pytest.fixture
def small_chunks(api_settings: Settings, monkeypatch: pytest.MonkeyPatch) -> int:
    """Chunks of 10 records: a 1,000-line upload is written as 100 chunk blobs."""
    monkeypatch.setenv("CELERIAC_JOBS__CHUNK_RECORDS", "10")
    get_settings.cache_clear()
    return 10


def test_a_big_upload_is_stored_chunk_by_chunk_sealed(
    client: TestClient, tenant: TenantFixture, api_settings: Settings, small_chunks: int
) -> None:
    lines = [json.dumps({"id": i, "text": f"secret {i}"}).encode() for i in range(1005)]
    content = b"\r\n".join(lines) + b"\r\n"
    answer = client.post(
        "/v1/jobs",
        headers=tenant.headers,
        data={"pipeline": "tabular-summary"},
        files={"file": ("big.ndjson", content, "application/x-ndjson")},
    )
    assert answer.status_code == 202, answer.text
    (job,) = _jobs()
    assert job.record_count == 1005
    assert job.payload_bytes == sum(len(line) + 1 for line in lines)
    assert job.checkpoints == {"payload": {"chunks": 101, "chunk_records": 10}, "slices": 1}
    stored = [
        tenant_blobs().get(tenant.id, f"{job.payload_key}{index:05d}.ndjson")
        for index in range(101)
    ]
    assert [piece.count(b"\n") for piece in stored] == [10] * 100 + [5]
    assert b"".join(stored) == b"\n".join(lines) + b"\n"
    on_disk = _stored_files(api_settings)
    assert len(on_disk) == 101
    assert not any(b"secret" in path.read_bytes() for path in on_disk)


@pytest.mark.parametrize(
    ("filename", "content_type", "content", "pointer"),
    [
        (
            "big.ndjson",
            "application/x-ndjson",
            b"".join(b'{"id": %d}\n' % i for i in range(1000)) + b'{"id": 1000\n',
            "#/body/file/1001",
        ),
        (
            "big.ndjson",
            "application/x-ndjson",
            b"".join(b'{"id": %d}\n' % i for i in range(1000)) + b"[1000]",
            "#/body/file/1001",
        ),
        (
            "big.csv",
            "text/csv",
            b"id,text\n" + b"".join(b"%d,t%d\n" % (i, i) for i in range(1000)) + b"1000,a,b\n",
            "#/body/file/1002",
        ),
    ],
)
def test_a_bad_line_at_the_end_of_a_big_upload_leaves_nothing(
    client: TestClient,
    tenant: TenantFixture,
    api_settings: Settings,
    small_chunks: int,
    filename: str,
    content_type: str,
    content: bytes,
    pointer: str,
) -> None:
    """The file is checked as it is streamed into its chunk blobs: the 100 chunks written
    before the last line are deleted when it turns out bad, and no job is stored."""
    answer = client.post(
        "/v1/jobs",
        headers=tenant.headers,
        data={"pipeline": "tabular-summary"},
        files={"file": (filename, content, content_type)},
    )
    assert answer.status_code == 422, answer.text
    assert answer.headers["content-type"] == "application/problem+json"
    assert [e["pointer"] for e in answer.json()["errors"]] == [pointer]
    assert _jobs() == []
    assert _stored_files(api_settings) == []
    with get_engine().connect() as conn:
        assert conn.execute(select(func.count()).select_from(UsageRecord)).scalar_one() == 0


def test_an_upload_over_the_record_limit_is_413_and_leaves_nothing(
    client: TestClient,
    tenant: TenantFixture,
    api_settings: Settings,
    admin_headers: dict[str, str],
    small_chunks: int,
) -> None:
    limits = client.put(
        f"/v1/admin/tenants/{tenant.id}/quotas",
        headers=admin_headers,
        json={"max_records_per_job": 25},
    )
    assert limits.status_code == 200, limits.text
    content = b"".join(b'{"id": %d}\n' % i for i in range(26))
    answer = client.post(
        "/v1/jobs",
        headers=tenant.headers,
        data={"pipeline": "tabular-summary"},
        files={"file": ("x.ndjson", content, "application/x-ndjson")},
    )
    assert answer.status_code == 413, answer.text
    assert answer.json()["policy"] == "records-per-job"
    assert _jobs() == []
    assert _stored_files(api_settings) == []


def test_a_refused_pipeline_deletes_the_streamed_chunks(
    client: TestClient, tenant: TenantFixture, api_settings: Settings, small_chunks: int
) -> None:
    content = b"".join(b'{"id": %d}\n' % i for i in range(100))
    answer = client.post(
        "/v1/jobs",
        headers=tenant.headers,
        data={"pipeline": '{"datasets": [{"name": "tabular"}], "analyzers": [{"name": "no"}]}'},
        files={"file": ("x.ndjson", content, "application/x-ndjson")},
    )
    assert answer.status_code == 422, answer.text
    assert _jobs() == []
    assert _stored_files(api_settings) == []


def test_malformed_wrong_type_and_oversized_bodies(
    client: TestClient, tenant: TenantFixture
) -> None:
    headers = tenant.headers | {"Content-Type": "application/json"}
    malformed = client.post("/v1/jobs", content=b'{"pipeline": ', headers=headers)
    assert malformed.status_code == 400
    assert malformed.json()["code"] == "malformed-body"
    text = client.post(
        "/v1/jobs", content=b"hello", headers=tenant.headers | {"Content-Type": "text/plain"}
    )
    assert text.status_code == 415
    assert "application/json" in text.json()["detail"]
    huge = json.dumps({"pipeline": SPEC, "records": [{"x": "y" * 1000}] * 11_000}).encode()
    assert len(huge) > 10 * 1024 * 1024
    too_big = client.post("/v1/jobs", content=huge, headers=headers)
    assert too_big.status_code == 413
    assert too_big.json()["code"] == "payload-too-large"
    assert _jobs() == []


@pytest.fixture
def small_limit_client(
    monkeypatch: pytest.MonkeyPatch, api_settings: Settings
) -> Iterator[TestClient]:
    monkeypatch.setenv("CELERIAC_API__MAX_BODY_BYTES", "2000")
    clear_process_caches()
    with TestClient(create_app(), raise_server_exceptions=False) as limited:
        yield limited


def test_body_limit_is_configurable_and_counts_chunked_bodies(
    small_limit_client: TestClient, tenant: TenantFixture
) -> None:
    body = json.dumps({"pipeline": SPEC, "records": [{"x": "y" * 100}] * 30}).encode()

    def chunks() -> Iterator[bytes]:  # no Content-Length: the stream itself is counted
        for start in range(0, len(body), 500):
            yield body[start : start + 500]

    answer = small_limit_client.post(
        "/v1/jobs",
        content=chunks(),
        headers=tenant.headers | {"Content-Type": "application/json"},
    )
    assert answer.status_code == 413
    assert _jobs() == []


def _submit(client: TestClient, tenant: TenantFixture, **extra: Any) -> str:
    answer = client.post(
        "/v1/jobs", json={"pipeline": SPEC, "records": RECORDS, **extra}, headers=tenant.headers
    )
    assert answer.status_code == 202, answer.text
    return str(answer.json()["id"])


def test_list_filters_and_pages(client: TestClient, tenant: TenantFixture) -> None:
    ids = [_submit(client, tenant) for _ in range(5)]
    with get_engine().begin() as conn:
        conn.execute(update(Job).where(Job.id == ids[0]).values(state=JobState.SUCCEEDED))
    page = client.get("/v1/jobs", params={"limit": 2}, headers=tenant.headers).json()
    assert [j["id"] for j in page["data"]] == ids[::-1][:2]
    assert page["next_cursor"]
    rest = client.get(
        "/v1/jobs", params={"cursor": page["next_cursor"], "limit": 10}, headers=tenant.headers
    ).json()
    assert [j["id"] for j in rest["data"]] == ids[::-1][2:]
    assert rest["next_cursor"] is None
    done = client.get("/v1/jobs", params={"state": "succeeded"}, headers=tenant.headers).json()
    assert [j["id"] for j in done["data"]] == [ids[0]]
    future = client.get(
        "/v1/jobs", params={"created_after": "2999-01-01T00:00:00Z"}, headers=tenant.headers
    ).json()
    assert future["data"] == []
    naive = client.get(
        "/v1/jobs", params={"created_after": "2020-01-01T00:00:00"}, headers=tenant.headers
    )
    assert naive.status_code == 422


def test_status_shows_progress_errors_and_results(
    client: TestClient, tenant: TenantFixture
) -> None:
    job_id = _submit(client, tenant)
    pending = client.get(f"/v1/jobs/{job_id}/results", headers=tenant.headers)
    assert pending.status_code == 409
    assert pending.headers["Retry-After"]

    with get_sessionmaker().begin() as session:  # what the workers record as they go
        job = session.get(Job, job_id)
        assert job is not None
        for chunk, state in enumerate([TaskState.SUCCEEDED, TaskState.SUCCEEDED, TaskState.FAILED]):
            session.add(
                JobTask(
                    tenant_id=job.tenant_id,
                    job_id=job.id,
                    task_key=f"datasets:tabular:{chunk}",
                    stage=JobStage.DATASETS,
                    plugin="tabular",
                    chunk=chunk,
                    input_key="k",
                    state=state,
                    attempts=3 if state is TaskState.FAILED else 1,
                    error="ValueError: bad row" if state is TaskState.FAILED else None,
                )
            )
        result_key = job_blob_key(tenant.id, job_id, "result.json")
        tenant_blobs().put(tenant.id, result_key, b'{"summary": {"rows": 5}}')
        job.state, job.result_key = JobState.PARTIAL, result_key

    detail = client.get(f"/v1/jobs/{job_id}", headers=tenant.headers).json()
    assert detail["state"] == "partial"
    assert detail["progress"]["datasets"] == {
        "total": 3,
        "pending": 0,
        "running": 0,
        "succeeded": 2,
        "failed": 1,
        "timed_out": 0,
        "cancelled": 0,
    }
    assert detail["errors"] == [
        {
            "stage": "datasets",
            "plugin": "tabular",
            "chunk": 2,
            "state": "failed",
            "error": "ValueError: bad row",
            "attempts": 3,
        }
    ]
    results = client.get(f"/v1/jobs/{job_id}/results", headers=tenant.headers)
    assert results.status_code == 200
    assert results.json() == {"summary": {"rows": 5}}


def test_cancel_is_compare_and_set_and_asks_the_orchestrator(
    client: TestClient, tenant: TenantFixture, redis_broker_url: str
) -> None:
    job_id = _submit(client, tenant)
    cancelled = client.post(f"/v1/jobs/{job_id}/cancel", headers=tenant.headers)
    assert cancelled.status_code == 200
    assert cancelled.json()["state"] == "cancelled"
    again = client.post(f"/v1/jobs/{job_id}/cancel", headers=tenant.headers)
    assert again.status_code == 409
    assert "already ended" in again.json()["detail"]
    (message,) = _queued_messages(redis_broker_url, f"orchestration.high.{tenant.slug}")
    assert message[1] == {"tenant_id": tenant.id, "job_id": job_id}
    no_results = client.get(f"/v1/jobs/{job_id}/results", headers=tenant.headers)
    assert no_results.status_code == 404


def test_scopes_guard_job_routes(
    client: TestClient, make_tenant: Callable[..., TenantFixture]
) -> None:
    reader = make_tenant(scopes=["jobs:read"])
    answer = client.post(
        "/v1/jobs", json={"pipeline": SPEC, "records": RECORDS}, headers=reader.headers
    )
    assert answer.status_code == 403
    assert answer.json()["missing_scopes"] == ["jobs:write"]
    with get_engine().connect() as conn:
        assert conn.execute(select(func.count()).select_from(Job)).scalar_one() == 0


def test_submission_counts_in_usage(client: TestClient, tenant: TenantFixture) -> None:
    job_id = _submit(client, tenant)
    with get_engine().connect() as conn:
        rows = conn.execute(select(UsageRecord.id, UsageRecord.metric)).all()
    assert [tuple(r) for r in rows] == [(f"job_{job_id}:jobs.submitted", "jobs.submitted")]


def test_a_job_that_fails_to_store_fails_alone_and_leaves_nothing(
    client: TestClient, tenant: TenantFixture, redis_broker_url: str, api_settings: Settings
) -> None:
    """Two submissions in one group commit: the batch's INSERT fails on the bad one, each is
    retried alone, the good one is stored and published, the bad one fails with its
    payload blob removed: a value the database refuses is the client's 422."""
    resolved = resolve_against(load_plugins(), SPEC)
    tenant_id = uuid.UUID(tenant.id)

    def submission(metadata: dict[str, Any]) -> Submission:
        return Submission(
            tenant_id=tenant_id,
            tenant_slug=tenant.slug,
            pipeline=resolved,
            payload=from_records(RECORDS),
            priority=Priority.NORMAL,
            metadata=metadata,
        )

    good, bad = submission({"ok": True}), submission({"bad": "\x00"})  # skips API checks

    async def write_both() -> list[BaseException | None]:
        loop = asyncio.get_running_loop()
        batch = [_Waiting(s, loop.create_future(), loop) for s in (good, bad)]
        await asyncio.to_thread(write_batch, batch)
        results = await asyncio.gather(*(w.future for w in batch), return_exceptions=True)
        return [r if isinstance(r, BaseException) else None for r in results]

    outcome = asyncio.run(write_both())
    assert outcome[0] is None
    assert isinstance(outcome[1], ValidationFailed)
    assert [job.id for job in _jobs()] == [good.id]
    assert [
        m[1]["job_id"]
        for m in _queued_messages(redis_broker_url, f"orchestration.normal.{tenant.slug}")
    ] == [str(good.id)]
    store = blob_store_from_settings(api_settings)
    assert store.exists(good.payload_prefix + "00000.ndjson")
    assert not store.exists(bad.payload_prefix + "00000.ndjson")


def test_concurrent_submissions_are_each_stored_once(
    api_settings: Settings, tenant: TenantFixture, redis_broker_url: str
) -> None:
    """Requests in flight together share group commits; every 202 is one job row and one
    start_job message, and every job has its own payload."""

    async def submit_many() -> list[httpx.Response]:
        app = create_app(api_settings)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            answers = await asyncio.gather(
                *(
                    http.post(
                        "/v1/jobs",
                        headers=tenant.headers,
                        json={"pipeline": SPEC, "records": [{"n": n}]},
                    )
                    for n in range(40)
                )
            )
        ingest_writer(app).close()
        return list(answers)

    answers = asyncio.run(submit_many())
    assert [a.status_code for a in answers] == [202] * 40
    ids = sorted(a.json()["id"] for a in answers)
    assert sorted(str(job.id) for job in _jobs()) == ids
    messages = _queued_messages(redis_broker_url, f"orchestration.normal.{tenant.slug}")
    assert sorted(m[1]["job_id"] for m in messages) == ids
    for answer in answers:
        sent = json.loads(answer.request.content)["records"]
        key = job_blob_key(tenant.id, answer.json()["id"], "payload/00000.ndjson")
        stored = tenant_blobs().get(tenant.id, key)
        assert [json.loads(line) for line in stored.splitlines()] == sent
