"""The canvas end to end: API -> orchestration -> distribution -> compute -> finalize, on
real workers, PostgreSQL and Redis."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest
from conftest import TenantFixture
from fastapi.testclient import TestClient
from sqlalchemy import select

from celeriac.platform.db import get_engine
from celeriac.platform.models import JobTask, UsageRecord

from worker_support import Workers, wait_for_job

pytestmark = pytest.mark.slow

SAMPLE = Path(__file__).resolve().parent.parent / "data" / "sample_1000.ndjson"


def test_small_job_runs_through_every_stage(
    client: TestClient, workers: Workers, make_tenant: Callable[..., TenantFixture]
) -> None:
    tenant = make_tenant()
    records = [json.loads(line) for line in SAMPLE.read_text().splitlines()[:100]]
    submitted = client.post("/v1/jobs", headers=tenant.headers, json={
        "pipeline": {"datasets": [{"name": "tabular"}],
                     "analyzers": [{"name": "summary"}]},
        "records": records})  # fmt: skip
    assert submitted.status_code == 202, submitted.text
    job = wait_for_job(client, tenant.headers, submitted.json()["id"])
    assert job["state"] == "succeeded", (job, workers.log("compute")[-3000:])
    results = client.get(f"/v1/jobs/{job['id']}/results", headers=tenant.headers).json()
    summary = results["analyses"]["summary"]["tabular"]
    expected = pd.json_normalize(records)["order.amount"].describe()
    assert summary is not None and expected["count"] > 0
    with get_engine().connect() as conn:
        tasks = conn.execute(select(JobTask.task_key, JobTask.state)).all()
        usage = {r.metric for r in conn.execute(select(UsageRecord.metric))}
    assert sorted((k, s.value) for k, s in tasks) == [
        ("analysis/summary/tabular", "succeeded"),
        ("datasets/tabular/00000", "succeeded"),
    ]
    assert usage == {"jobs.submitted", "jobs.completed", "records.processed",
                     "compute.seconds", "storage.bytes"}  # fmt: skip
