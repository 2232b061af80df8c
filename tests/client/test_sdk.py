"""The SDK against a live platform (API under uvicorn, real workers, PostgreSQL, Redis):
what a tenant's code sees."""

from __future__ import annotations

import asyncio
import json
import threading
import uuid
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest
from conftest import TenantFixture
from fastapi.testclient import TestClient

from celeriac.client import (
    APIError,
    AsyncClient,
    Client,
    Conflict,
    Gone,
    JobEvent,
    JobState,
    NotFound,
    RateLimited,
    RetryPolicy,
    ServiceUnavailable,
    ValidationFailed,
)
from celeriac.platform.db import get_sessionmaker
from celeriac.platform.jobs.pipelines import ANALYZER, DATASET, PluginInfo, register_plugins

from sdk_support import ALL_SCOPES, LivePlatform

pytestmark = pytest.mark.slow

RECORDS = [{"id": i, "amount": float(i) * 1.5, "group": "ab"[i % 2]} for i in range(40)]


def test_submit_wait_with_progress_and_results_as_frames(
    live_platform: LivePlatform, tenant: TenantFixture
) -> None:
    seen: list[JobEvent] = []
    with Client(base_url=live_platform.url, api_key=tenant.key) as client:
        job = client.jobs.submit(
            records=RECORDS, pipeline="tabular-summary", metadata={"run": "sdk"}
        )
        assert job.state is JobState.QUEUED
        assert job.record_count == len(RECORDS)
        done = job.wait(progress=seen.append, timeout=120)
        assert done.state is JobState.SUCCEEDED
        assert done.finished_at is not None
        assert done.expires_at is not None
        assert done.expires_at > done.finished_at
        document = done.results()
        frames = done.results(as_frame=True)

    # The stream: queued, running, one progress event per task in stage order, the end.
    assert [e.state for e in seen][:2] == [JobState.QUEUED, JobState.RUNNING]
    assert seen[-1].final
    assert seen[-1].state is JobState.SUCCEEDED
    progress = [e for e in seen if e.type == "progress"]
    assert progress
    assert all(e.total and e.done <= e.total for e in progress)
    for stage in {e.stage for e in progress}:
        counts = [e.done for e in progress if e.stage == stage]
        assert counts == list(range(1, len(counts) + 1)), (stage, counts)
    assert len({e.id for e in seen}) == len(seen)

    summary = document["analyses"]["summary"]["tabular"]
    assert summary["rows"] == len(RECORDS)
    numeric = frames["analyses"]["summary"]["tabular"]["numeric"]
    assert isinstance(numeric, pd.DataFrame)
    assert set(numeric.index) == {"id", "amount"}
    described = pd.DataFrame(RECORDS)["amount"].describe()
    assert numeric.loc["amount", "mean"] == pytest.approx(described["mean"])
    assert numeric.loc["amount", "std"] == pytest.approx(described["std"])
    other = frames["analyses"]["summary"]["tabular"]["other"]
    assert other.loc["group", "distinct"] == 2
    assert frames["analyses"]["summary"]["tabular"]["rows"] == len(RECORDS)


def test_dataframe_csv_and_ndjson_submissions_and_pagination(
    live_platform: LivePlatform, tenant: TenantFixture, tmp_path: Path
) -> None:
    frame = pd.DataFrame(RECORDS)
    csv_path = tmp_path / "records.csv"
    frame.to_csv(csv_path, index=False)
    ndjson_path = tmp_path / "records.ndjson"
    ndjson_path.write_text("\n".join(json.dumps(r) for r in RECORDS) + "\n")
    with Client(base_url=live_platform.url, api_key=tenant.key) as client:
        jobs = [
            client.jobs.submit(frame, pipeline="tabular-summary"),
            client.jobs.submit(file=csv_path, pipeline="tabular-summary", priority="high"),
            client.jobs.submit(file=ndjson_path, pipeline="tabular-summary"),
        ]
        assert [j.record_count for j in jobs] == [len(RECORDS)] * 3
        finished = [j.wait(timeout=120) for j in jobs]
        assert {j.state for j in finished} == {JobState.SUCCEEDED}
        for finished_job in finished:
            numeric = finished_job.results()["analyses"]["summary"]["tabular"]["numeric"]
            assert numeric["amount"]["mean"] == pytest.approx(frame["amount"].mean())
        # Pages of one: the iterator follows next_cursor through all of them, newest first.
        listed = [j.id for j in client.jobs.list(page_size=1)]
        assert listed == [j.id for j in reversed(jobs)]
        assert [j.id for j in client.jobs.list(state="succeeded", page_size=2)] == listed


def test_async_client_rerun_and_delete(live_platform: LivePlatform, tenant: TenantFixture) -> None:
    async def scenario() -> None:
        async with AsyncClient(base_url=live_platform.url, api_key=tenant.key) as client:
            job = await client.jobs.submit(records=RECORDS, pipeline="tabular-summary")
            first = await job.wait(timeout=120)
            assert first.state is JobState.SUCCEEDED
            again = await first.rerun(priority="high")
            assert again.id != first.id
            rerun = await again.wait(timeout=120)
            assert rerun.rerun_of == first.id
            assert rerun.priority.value == "high"
            assert rerun.record_count == first.record_count
            assert (await rerun.results())["analyses"] == (await first.results())["analyses"]
            events = [e async for e in client.jobs.events(first.id)]
            assert events[-1].final
            assert events[-1].state is JobState.SUCCEEDED

            await first.delete()
            gone = await first.refresh()
            assert gone.data_deleted_at is not None
            assert gone.expires_at is None
            with pytest.raises(Gone) as refused:
                await first.rerun()
            assert refused.value.status == 410
            assert "re-run" in refused.value.detail
            with pytest.raises(Gone):
                await first.results()
            assert [j.id async for j in client.jobs.list(page_size=1)] == [rerun.id, first.id]

    asyncio.run(scenario())


def test_errors_carry_the_problem_fields(
    live_api: LivePlatform, tenant: TenantFixture, make_tenant: Callable[..., TenantFixture]
) -> None:
    with get_sessionmaker().begin() as session:  # what the compute pool would publish
        register_plugins(
            session,
            [
                PluginInfo(DATASET, "tabular", "1.0", {"type": "object"}, produces="table"),
                PluginInfo(ANALYZER, "summary", "1.0", {"type": "object"}, accepts=("table",)),
            ],
        )
    other = make_tenant("sdk-other", scopes=ALL_SCOPES)
    with (
        Client(base_url=live_api.url, api_key=tenant.key) as client,
        Client(base_url=live_api.url, api_key=other.key) as others,
    ):
        spec = {"datasets": [{"name": "tabular"}], "analyzers": [{"name": "summary"}]}
        job = client.jobs.submit(records=RECORDS[:3], pipeline=spec)
        with pytest.raises(NotFound) as missing:
            others.jobs.get(job.id)  # another tenant's job is a 404
        assert missing.value.status == 404
        assert missing.value.code == "not-found"
        assert missing.value.instance == f"/v1/jobs/{job.id}"
        assert missing.value.request_id
        with pytest.raises(NotFound):
            client.jobs.get(uuid.uuid4())
        with pytest.raises(Conflict) as running:
            client.jobs.delete(job.id)  # queued: no workers in this test
        assert running.value.extra["state"] == "queued"
        with pytest.raises(ValidationFailed) as invalid:
            client.jobs.submit(records=[{"a": 1}], pipeline="no-such-pipeline")
        assert invalid.value.errors[0]["pointer"] == "#/body/pipeline"
        with pytest.raises(ValueError, match="either records"):
            client.jobs.submit(pipeline="full")
    with Client(base_url=live_api.url, api_key="ck_live_wrong") as stranger:
        with pytest.raises(APIError) as denied:
            stranger.quotas.get()
        assert denied.value.status == 401


def test_429_is_retried_after_retry_after_within_the_budget(
    live_api: LivePlatform,
    tenant: TenantFixture,
    client: TestClient,
    admin_headers: dict[str, str],
) -> None:
    limits = {"requests_per_second": 1, "request_burst": 1}
    assert (
        client.put(
            f"/v1/admin/tenants/{tenant.id}/quotas", json=limits, headers=admin_headers
        ).status_code
        == 200
    )
    with Client(
        base_url=live_api.url, api_key=tenant.key, retry=RetryPolicy(max_retries=0)
    ) as impatient:

        def throttled() -> RateLimited | None:
            try:
                impatient.quotas.get()
                impatient.quotas.get()
            except RateLimited as exc:
                return exc
            return None

        refused = throttled() or throttled()
        assert refused is not None
        assert refused.retry_after is not None
        assert refused.code == "quota-exceeded"
        assert refused.extra["policy"] == "requests"
    with Client(
        base_url=live_api.url, api_key=tenant.key, retry=RetryPolicy(max_retries=5, max_wait=30)
    ) as patient:
        # Each call beyond the first in a second is refused once, then retried and answered.
        statuses = [patient.quotas.get().plan for _ in range(3)]
        assert statuses == ["free"] * 3


class Scripted:
    """A loopback HTTP server answering from a script (the last reply repeats)."""

    def __init__(self, *replies: tuple[int, dict[str, str], bytes]) -> None:
        self.replies = list(replies)
        self.requests: list[tuple[str, dict[str, str]]] = []
        scripted = self

        class Handler(BaseHTTPRequestHandler):
            def _reply(self) -> None:
                self.rfile.read(int(self.headers.get("content-length") or 0))
                scripted.requests.append((self.command, dict(self.headers)))
                index = min(len(scripted.requests), len(scripted.replies)) - 1
                status, headers, body = scripted.replies[index]
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = _reply

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


UNAVAILABLE = (
    503,
    {"Retry-After": "0", "content-type": "application/problem+json"},
    json.dumps(
        {
            "status": 503,
            "title": "Service unavailable",
            "detail": "db down",
            "code": "service-unavailable",
        }
    ).encode(),
)
ACCEPTED = (
    202,
    {"content-type": "application/json"},
    json.dumps(
        {
            "id": str(uuid.uuid4()),
            "state": "queued",
            "priority": "normal",
            "record_count": 1,
            "created_at": "2026-12-04T00:00:00Z",
            "status_url": "/v1/jobs/x",
            "results_url": "/x",
        }
    ).encode(),
)


def test_503_is_retried_with_the_same_idempotency_key_and_the_budget_is_bounded() -> None:
    server = Scripted(UNAVAILABLE, UNAVAILABLE, ACCEPTED)
    try:
        with Client(base_url=server.url, api_key="ck_live_x") as client:
            job = client.jobs.submit(records=[{"a": 1}], pipeline="full")
        assert job.state is JobState.QUEUED
        keys = {headers["Idempotency-Key"] for _, headers in server.requests}
        assert len(server.requests) == 3
        assert len(keys) == 1
    finally:
        server.close()
    down = Scripted(UNAVAILABLE)
    try:
        policy = RetryPolicy(max_retries=2)
        with (
            Client(base_url=down.url, api_key="ck_live_x", retry=policy) as client,
            pytest.raises(ServiceUnavailable) as refused,
        ):
            client.quotas.get()
        assert refused.value.detail == "db down"
        assert refused.value.retry_after == 0
        assert len(down.requests) == 3  # the first try and two retries, then the error
    finally:
        down.close()


def test_a_retry_after_longer_than_the_budget_is_not_waited_for() -> None:
    month = (
        429,
        {"Retry-After": "2000000", "content-type": "application/problem+json"},
        json.dumps({"status": 429, "detail": "monthly quota", "policy": "jobs-monthly"}).encode(),
    )
    server = Scripted(month)
    try:
        with (
            Client(base_url=server.url, api_key="ck_live_x") as client,
            pytest.raises(RateLimited) as refused,
        ):
            client.jobs.submit(records=[{"a": 1}], pipeline="full")
        assert refused.value.extra["policy"] == "jobs-monthly"
        assert refused.value.retry_after == 2000000
        assert len(server.requests) == 1
    finally:
        server.close()


def test_the_event_stream_resumes_after_last_event_id(
    live_platform: LivePlatform, tenant: TenantFixture
) -> None:
    with Client(base_url=live_platform.url, api_key=tenant.key) as client:
        job = client.jobs.submit(records=RECORDS, pipeline="tabular-summary")
        whole = list(client.jobs.events(job.id, timeout=120))
        for cut in range(len(whole)):
            rest = list(client.jobs.events(job.id, last_event_id=whole[cut].id, timeout=30))
            assert [e.id for e in rest] == [e.id for e in whole[cut + 1 :]]
        # Past the final event the server's stream is empty and ends.
        headers = {"Authorization": f"Bearer {tenant.key}", "Last-Event-ID": whole[-1].id}
        after = httpx.get(f"{live_platform.url}/v1/jobs/{job.id}/events", headers=headers)
        assert after.status_code == 200
        assert "data:" not in after.text
        # Raw SSE as a browser's EventSource would read it.
        headers = {"Authorization": f"Bearer {tenant.key}", "Last-Event-ID": whole[0].id}
        raw = httpx.get(f"{live_platform.url}/v1/jobs/{job.id}/events", headers=headers)
        assert raw.headers["content-type"].startswith("text/event-stream")
        assert f"id: {whole[-1].id}" in raw.text
        assert f"id: {whole[0].id}\n" not in raw.text
