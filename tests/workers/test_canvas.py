"""The canvas end to end: API -> orchestration -> distribution -> compute -> finalize, on
real workers, PostgreSQL and Redis."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from conftest import TenantFixture
from fastapi.testclient import TestClient
from sqlalchemy import select
from standardwebhooks.webhooks import Webhook

from celeriac.platform.db import get_engine
from celeriac.platform.models import JobTask, UsageRecord
from celeriac.platform.settings import get_settings
from celeriac.workers.compute import analyze_dataset, build_dataset

from worker_support import Receiver, Workers, wait_for_job, wait_until

pytestmark = pytest.mark.slow

SAMPLE = Path(__file__).resolve().parent.parent / "data" / "sample_1000.ndjson"


def test_small_job_runs_through_every_stage(
    client: TestClient, workers: Workers, make_tenant: Callable[..., TenantFixture]
) -> None:
    tenant, hook = make_tenant(), Receiver()
    target = client.post(
        "/v1/webhooks", headers=tenant.headers, json={"url": hook.url, "event_types": ["job.*"]}
    ).json()
    records = [json.loads(line) for line in SAMPLE.read_text().splitlines()[:100]]
    submitted = client.post(
        "/v1/jobs",
        headers=tenant.headers,
        json={
            "pipeline": {"datasets": [{"name": "tabular"}], "analyzers": [{"name": "summary"}]},
            "records": records,
        },
    )
    assert submitted.status_code == 202, submitted.text
    job = wait_for_job(client, tenant.headers, submitted.json()["id"])
    assert job["state"] == "succeeded", (job, workers.log("compute")[-3000:])
    results = client.get(f"/v1/jobs/{job['id']}/results", headers=tenant.headers).json()
    summary = results["analyses"]["summary"]["tabular"]
    expected = pd.json_normalize(records)["order.amount"].describe()
    assert summary is not None
    assert expected["count"] > 0

    # The tenant is called back, signed (Standard Webhooks), once the job has ended.
    def attempts() -> list[dict[str, Any]]:
        url = f"/v1/webhooks/{target['id']}/attempts"
        found: list[dict[str, Any]] = client.get(url, headers=tenant.headers).json()["data"]
        return found

    wait_until(attempts, 60, "a webhook attempt", every=0.2)
    assert attempts()[0]["status_code"] == 200, attempts()[0]["error"]
    hook.close()
    (got,) = hook.received
    event = Webhook(target["secret"]).verify(got.body, got.headers)
    assert event["type"] == "job.succeeded"
    assert event["data"]["job_id"] == job["id"]
    assert event["data"]["results_url"].endswith(f"/v1/jobs/{job['id']}/results")
    with get_engine().connect() as conn:
        tasks = conn.execute(select(JobTask.task_key, JobTask.state)).all()
        usage = {r.metric for r in conn.execute(select(UsageRecord.metric))}
    assert sorted((k, s.value) for k, s in tasks) == [
        ("analysis/summary/tabular", "succeeded"),
        ("datasets/tabular/00000", "succeeded"),
    ]
    assert usage == {
        "jobs.submitted",
        "jobs.completed",
        "records.processed",
        "compute.seconds",
        "storage.bytes",
        "webhooks.delivered",
    }


def test_a_sliced_job_gives_what_the_plugins_give_on_the_whole_input(
    client: TestClient,
    workers: Workers,
    make_tenant: Callable[..., TenantFixture],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # 250 records in chunks of 100 and slices of 100: sentiment runs as 3 slices and a merge.
    monkeypatch.setenv("CELERIAC_JOBS__CHUNK_RECORDS", "100")
    monkeypatch.setenv("CELERIAC_JOBS__SLICE_RECORDS", "100")
    get_settings.cache_clear()
    tenant = make_tenant()
    records = [json.loads(line) for line in SAMPLE.read_text().splitlines()[:250]]
    submitted = client.post(
        "/v1/jobs", headers=tenant.headers, json={"pipeline": "full", "records": records}
    )
    assert submitted.status_code == 202, submitted.text
    job = wait_for_job(client, tenant.headers, submitted.json()["id"])
    assert job["state"] == "succeeded", (job, workers.log("compute")[-3000:])
    assert job["progress"]["analysis"]["succeeded"] == 3 + 4  # 3 slices, 4 results

    results = client.get(f"/v1/jobs/{job['id']}/results", headers=tenant.headers).json()
    datasets = {
        "tabular": build_dataset("tabular", [records]),
        "text": build_dataset("text", [records]),
    }
    expected = {
        analyzer: {dataset: json.loads(json.dumps(analyze_dataset(analyzer, datasets[dataset])))}
        for analyzer, dataset in (
            ("summary", "tabular"),
            ("anomalies", "tabular"),
            ("sentiment", "text"),
            ("keywords", "text"),
        )
    }
    assert results["analyses"] == expected
