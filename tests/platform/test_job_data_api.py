"""Re-run, deletion, retention and the event stream's bad input, through the API (real
PostgreSQL and Redis; no workers, so jobs stay queued until cancelled)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from conftest import TenantFixture
from fastapi.testclient import TestClient
from sqlalchemy import func, select, update

from celeriac.platform.db import get_sessionmaker
from celeriac.platform.jobs.data import expire_jobs
from celeriac.platform.jobs.pipelines import ANALYZER, DATASET, PluginInfo, register_plugins
from celeriac.platform.models import Job, UsageRecord, WebhookMessage, utcnow
from celeriac.platform.settings import Settings
from celeriac.platform.storage.blobs import job_blob_key
from celeriac.platform.tenant_data import tenant_blobs
from celeriac.platform.webhooks import payloads

SPEC = {"datasets": [{"name": "tabular"}], "analyzers": [{"name": "summary"}]}
RECORDS = [{"n": i, "label": f"r{i}"} for i in range(5)]


@pytest.fixture
def tenants(client: TestClient, make_tenant: Callable[..., TenantFixture]) -> list[TenantFixture]:
    with get_sessionmaker().begin() as session:
        register_plugins(
            session,
            [
                PluginInfo(DATASET, "tabular", "1.0", {"type": "object"}, produces="table"),
                PluginInfo(ANALYZER, "summary", "1.0", {"type": "object"}, accepts=("table",)),
            ],
        )
    return [make_tenant("data-a"), make_tenant("data-b")]


def _submit(client: TestClient, tenant: TenantFixture, **extra: Any) -> dict[str, Any]:
    answer = client.post(
        "/v1/jobs", json={"pipeline": SPEC, "records": RECORDS, **extra}, headers=tenant.headers
    )
    assert answer.status_code == 202, answer.text
    return dict(answer.json())


def _finished(client: TestClient, tenant: TenantFixture) -> dict[str, Any]:
    """A job that has ended (cancelled while queued: no workers here)."""
    job = _submit(client, tenant)
    assert client.post(f"/v1/jobs/{job['id']}/cancel", headers=tenant.headers).is_success
    return job


def _payload_exists(tenant: TenantFixture, job_id: str) -> bool:
    key = job_blob_key(tenant.id, job_id, "payload/00000.ndjson")
    return tenant_blobs().exists(tenant.id, key)


def _problem(answer: Any, status: int) -> dict[str, Any]:
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"] == "application/problem+json"
    return dict(answer.json())


def test_rerun_makes_a_linked_job_on_the_stored_records(
    client: TestClient, tenants: list[TenantFixture]
) -> None:
    tenant = tenants[0]
    original = _finished(client, tenant)
    again = client.post(
        f"/v1/jobs/{original['id']}/rerun", json={"priority": "high"}, headers=tenant.headers
    )
    assert again.status_code == 202, again.text
    rerun = client.get(f"/v1/jobs/{again.json()['id']}", headers=tenant.headers).json()
    assert rerun["rerun_of"] == original["id"]
    assert rerun["priority"] == "high"
    assert rerun["record_count"] == len(RECORDS)
    assert rerun["state"] == "queued"
    assert rerun["pipeline"]["datasets"][0]["name"] == "tabular"
    # The same records, stored again under the new job.
    key = job_blob_key(tenant.id, rerun["id"], "payload/00000.ndjson")
    stored = tenant_blobs().get(tenant.id, key).decode().splitlines()
    assert [json.loads(line) for line in stored] == RECORDS
    # A submission as any other: a jobs.submitted usage record of its own.
    with get_sessionmaker()() as session:
        submitted = session.scalar(
            select(func.count())
            .select_from(UsageRecord)
            .where(
                UsageRecord.metric == "jobs.submitted",
                UsageRecord.tenant_id == uuid.UUID(tenant.id),
            )
        )
    assert submitted == 2


def test_rerun_bad_input(client: TestClient, tenants: list[TenantFixture]) -> None:
    mine, other = tenants
    job = _finished(client, mine)
    for body, pointer in (
        ({"pipeline": "nope"}, "#/body/pipeline"),
        ({"priority": "urgent"}, "#/body/priority"),
        ({"records": [{"a": 1}]}, "#/body/records"),
    ):
        problem = _problem(
            client.post(f"/v1/jobs/{job['id']}/rerun", json=body, headers=mine.headers), 422
        )
        assert problem["errors"][0]["pointer"] == pointer
    headers = {**mine.headers, "content-type": "application/json"}
    malformed = client.post(f"/v1/jobs/{job['id']}/rerun", content=b"{not json", headers=headers)
    assert _problem(malformed, 400)["code"] == "malformed-body"
    _problem(client.post(f"/v1/jobs/{uuid.uuid4()}/rerun", headers=mine.headers), 404)
    _problem(client.post(f"/v1/jobs/{job['id']}/rerun", headers=other.headers), 404)
    listed = client.get("/v1/jobs", headers=mine.headers).json()["data"]
    assert [j["id"] for j in listed] == [job["id"]]  # nothing was half-written


def test_delete_removes_the_blobs_keeps_the_row_and_usage_and_refuses_a_rerun(
    client: TestClient, tenants: list[TenantFixture]
) -> None:
    mine, other = tenants
    queued = _submit(client, mine)
    problem = _problem(client.delete(f"/v1/jobs/{queued['id']}", headers=mine.headers), 409)
    assert problem["state"] == "queued"
    assert "cancel it first" in problem["detail"]
    assert _payload_exists(mine, queued["id"])

    _problem(client.delete(f"/v1/jobs/{queued['id']}", headers=other.headers), 404)
    _problem(client.delete(f"/v1/jobs/{uuid.uuid4()}", headers=mine.headers), 404)

    assert client.post(f"/v1/jobs/{queued['id']}/cancel", headers=mine.headers).is_success
    with get_sessionmaker()() as session:
        assert session.get(Job, uuid.UUID(queued["id"])).data_key  # type: ignore[union-attr]
        usage_before = session.scalar(select(func.count()).select_from(UsageRecord))
    assert client.delete(f"/v1/jobs/{queued['id']}", headers=mine.headers).status_code == 204
    assert not _payload_exists(mine, queued["id"])
    assert client.delete(f"/v1/jobs/{queued['id']}", headers=mine.headers).status_code == 204
    job = client.get(f"/v1/jobs/{queued['id']}", headers=mine.headers).json()
    assert job["data_deleted_at"] is not None
    assert job["expires_at"] is None
    with get_sessionmaker()() as session:
        assert session.scalar(select(func.count()).select_from(UsageRecord)) == usage_before

    refused = _problem(client.post(f"/v1/jobs/{queued['id']}/rerun", headers=mine.headers), 410)
    assert refused["code"] == "job-data-deleted"
    assert "cannot be re-run" in refused["detail"]
    gone = _problem(client.get(f"/v1/jobs/{queued['id']}/results", headers=mine.headers), 410)
    assert gone["code"] == "job-data-deleted"
    # The job's data key went with its blobs (the crypto-shred, docs/adr/0015).
    with get_sessionmaker()() as session:
        assert session.get(Job, uuid.UUID(queued["id"])).data_key is None  # type: ignore[union-attr]


def test_retention_deletes_old_job_data_in_batches_with_an_expired_event(
    client: TestClient, tenants: list[TenantFixture], admin_headers: dict[str, str]
) -> None:
    mine, other = tenants
    target = client.post(
        "/v1/webhooks",
        json={"url": "http://127.0.0.1:9/hook", "event_types": ["job.expired"]},
        headers=mine.headers,
    )
    assert target.status_code == 201, target.text
    old = [_finished(client, mine) for _ in range(3)]
    young = _finished(client, mine)
    theirs = _finished(client, other)
    # The free plan keeps 7 days; the admin gives the other tenant 30.
    assert (
        client.put(
            f"/v1/admin/tenants/{other.id}/quotas",
            json={"retention_days": 30},
            headers=admin_headers,
        ).status_code
        == 200
    )
    ten_days_ago = utcnow() - timedelta(days=10)
    with get_sessionmaker().begin() as session:
        ids = [uuid.UUID(j["id"]) for j in [*old, theirs]]
        session.execute(update(Job).where(Job.id.in_(ids)).values(finished_at=ten_days_ago))
    shown = client.get(f"/v1/jobs/{old[0]['id']}", headers=mine.headers).json()
    assert shown["expires_at"].startswith((ten_days_ago + timedelta(days=7)).date().isoformat())

    assert expire_jobs(batch=2) == 2  # bounded: the rest waits for the next batch
    assert expire_jobs(batch=2) == 1
    assert expire_jobs(batch=2) == 0
    for job in old:
        assert not _payload_exists(mine, job["id"])
        assert (
            client.get(f"/v1/jobs/{job['id']}", headers=mine.headers).json()["data_deleted_at"]
            is not None
        )
    assert _payload_exists(mine, young["id"])
    assert _payload_exists(other, theirs["id"])
    with get_sessionmaker()() as session:
        expired = [
            payloads.reveal(m)
            for m in session.scalars(
                select(WebhookMessage).where(WebhookMessage.event_type == "job.expired")
            ).all()
        ]
    assert sorted(m["data"]["job_id"] for m in expired) == sorted(j["id"] for j in old)


def test_event_stream_of_a_finished_job_sends_the_final_state_and_ends(
    client: TestClient, tenants: list[TenantFixture]
) -> None:
    mine = tenants[0]
    job = _finished(client, mine)
    answer = client.get(f"/v1/jobs/{job['id']}/events", headers=mine.headers)
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/event-stream")
    events = [
        json.loads(line.removeprefix("data: "))
        for line in answer.text.splitlines()
        if line.startswith("data: ")
    ]
    assert [(e["type"], e["state"]) for e in events] == [
        ("state", "queued"),
        ("state", "cancelled"),
    ]
    assert events[-1]["final"] is True
    resumed = client.get(
        f"/v1/jobs/{job['id']}/events", headers={**mine.headers, "Last-Event-ID": events[0]["id"]}
    )
    assert [
        json.loads(line.removeprefix("data: "))
        for line in resumed.text.splitlines()
        if line.startswith("data: ")
    ] == events[1:]


@pytest.mark.parametrize("value", ["garbage", "3.0.0.0", "1.2.3", "1.-2.0.0", "x" * 500])
def test_a_malformed_last_event_id_is_a_400(
    client: TestClient, tenants: list[TenantFixture], value: str
) -> None:
    job = _finished(client, tenants[0])
    headers = {**tenants[0].headers, "Last-Event-ID": value}
    problem = _problem(client.get(f"/v1/jobs/{job['id']}/events", headers=headers), 400)
    assert "Last-Event-ID" in problem["detail"]


def test_event_stream_of_an_unknown_or_foreign_job_is_a_404(
    client: TestClient, tenants: list[TenantFixture]
) -> None:
    mine, other = tenants
    job = _finished(client, mine)
    _problem(client.get(f"/v1/jobs/{job['id']}/events", headers=other.headers), 404)
    _problem(client.get(f"/v1/jobs/{uuid.uuid4()}/events", headers=mine.headers), 404)
    _problem(client.get("/v1/jobs/not-a-uuid/events", headers=mine.headers), 422)


def test_a_suspended_tenant_reads_its_jobs_and_usage_and_every_write_is_refused(
    client: TestClient,
    tenants: list[TenantFixture],
    make_tenant: Callable[..., TenantFixture],
    admin_headers: dict[str, str],
) -> None:
    scopes = ["jobs:write", "jobs:read", "webhooks:manage", "keys:manage", "usage:read"]
    mine = make_tenant("held-co", scopes=scopes)
    job = _submit(client, mine)
    finished = _finished(client, mine)
    leaked_key = client.post(
        "/v1/keys", json={"name": "leaked", "scopes": ["jobs:read"]}, headers=mine.headers
    )
    assert leaked_key.status_code == 201, leaked_key.text
    leaked = leaked_key.json()
    suspended = client.patch(
        f"/v1/admin/tenants/{mine.id}", json={"status": "suspended"}, headers=admin_headers
    )
    assert suspended.status_code == 200, suspended.text

    read = client.get(f"/v1/jobs/{job['id']}", headers=mine.headers)
    assert read.status_code == 200, read.text
    reason = read.json()["waiting_reason"]
    assert reason["reason"] == "tenant-suspended"
    assert "suspended" in reason["detail"]
    listed = client.get("/v1/jobs", headers=mine.headers)
    assert {j["id"] for j in listed.json()["data"]} == {job["id"], finished["id"]}
    events = client.get(f"/v1/jobs/{finished['id']}/events", headers=mine.headers)
    assert events.status_code == 200
    assert '"state":"cancelled"' in events.text.replace(" ", "")
    assert client.get("/v1/quotas", headers=mine.headers).status_code == 200
    usage = client.get("/v1/usage/records", headers=mine.headers)
    assert usage.status_code == 200, usage.text
    assert {r["tenant_id"] for r in usage.json()["data"]} == {mine.id}

    before = client.get("/v1/jobs", headers=mine.headers).json()["data"]
    writes = [
        client.post("/v1/jobs", json={"pipeline": SPEC, "records": RECORDS}, headers=mine.headers),
        client.post(f"/v1/jobs/{finished['id']}/rerun", json={}, headers=mine.headers),
        client.post(f"/v1/jobs/{job['id']}/cancel", headers=mine.headers),
        client.delete(f"/v1/jobs/{finished['id']}", headers=mine.headers),
        client.post("/v1/keys", json={"name": "another"}, headers=mine.headers),
        client.post("/v1/webhooks", json={"url": "https://example.com/h"}, headers=mine.headers),
    ]
    for answer in writes:
        problem = _problem(answer, 403)
        assert problem["code"] == "tenant-suspended", problem
        assert "suspended" in problem["detail"]
    # Nothing was written: the same jobs, the queued one still queued, the data still there.
    assert client.get("/v1/jobs", headers=mine.headers).json()["data"] == before
    assert _payload_exists(mine, finished["id"])
    # Revoking only takes access away: a suspended tenant may still revoke a leaked key.
    leaked_headers = {"Authorization": f"Bearer {leaked['key']}"}
    assert client.get("/v1/jobs", headers=leaked_headers).status_code == 200
    revoked = client.post(f"/v1/keys/{leaked['id']}/revoke", headers=mine.headers)
    assert revoked.status_code == 200, revoked.text
    assert client.get("/v1/jobs", headers=leaked_headers).status_code == 401

    client.patch(f"/v1/admin/tenants/{mine.id}", json={"status": "active"}, headers=admin_headers)
    assert client.post(f"/v1/jobs/{job['id']}/cancel", headers=mine.headers).is_success


def test_waiting_reasons_from_the_database(
    client: TestClient,
    tenants: list[TenantFixture],
    admin_headers: dict[str, str],
    api_settings: Settings,
) -> None:
    mine = tenants[0]
    job = _submit(client, mine)
    with get_sessionmaker().begin() as session:
        session.execute(
            update(Job).where(Job.id == uuid.UUID(job["id"])).values(held_since=utcnow())
        )
    reason = client.get(f"/v1/jobs/{job['id']}", headers=mine.headers).json()["waiting_reason"]
    assert reason["reason"] == "running-job-limit"
    assert reason["limit"] == 2
    assert reason["running"] == 0
    assert "max_running_jobs" in reason["detail"]
    cancelled = client.post(f"/v1/jobs/{job['id']}/cancel", headers=mine.headers).json()
    assert (
        client.get(f"/v1/jobs/{cancelled['id']}", headers=mine.headers).json()["waiting_reason"]
        is None
    )
