"""Quotas and usage on real workers: a tenant's running-job limit holds its extra jobs
without delaying another tenant, every final state is one jobs.completed record, and a
redelivered finalize or a replayed submission changes no total."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime
from decimal import Decimal
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
from conftest import TenantFixture
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from celeriac.platform.db import get_engine
from celeriac.platform.models import FINAL_JOB_STATES, Job, UsageRecord
from celeriac.platform.queues import TaskName
from celeriac.platform.tasks import Publication, default_publisher

from worker_support import Workers, wait_for_job, wait_until

pytestmark = pytest.mark.slow

SAMPLE = Path(__file__).resolve().parent.parent / "data" / "sample_1000.ndjson"
PIPELINE = {"datasets": [{"name": "tabular"}], "analyzers": [{"name": "summary"}]}


def _submit(client: TestClient, tenant: TenantFixture, records: list[Any], **headers: str) -> str:
    answer = client.post(
        "/v1/jobs",
        headers=tenant.headers | headers,
        json={"pipeline": PIPELINE, "records": records},
    )
    assert answer.status_code == 202, answer.text
    return str(answer.json()["id"])


def _at(value: str) -> datetime:
    return datetime.fromisoformat(value)


def _usage_totals() -> list[tuple[str, str, Decimal, int]]:
    with get_engine().connect() as conn:
        rows = conn.execute(
            select(
                UsageRecord.tenant_id,
                UsageRecord.metric,
                func.sum(UsageRecord.quantity),
                func.count(),
            )
            .group_by(UsageRecord.tenant_id, UsageRecord.metric)
            .order_by(UsageRecord.tenant_id, UsageRecord.metric)
        ).all()
    return [(str(t), m, Decimal(q), int(n)) for t, m, q, n in rows]


def _finished_jobs_by_tenant() -> dict[str, int]:
    with get_engine().connect() as conn:
        rows = conn.execute(
            select(Job.tenant_id, func.count())
            .where(Job.state.in_(list(FINAL_JOB_STATES)))
            .group_by(Job.tenant_id)
        ).all()
    return {str(t): int(n) for t, n in rows}


def test_running_job_limit_holds_a_tenants_jobs_and_usage_is_exactly_once(
    client: TestClient,
    workers: Workers,
    make_tenant: Callable[..., TenantFixture],
    admin_headers: dict[str, str],
) -> None:
    a, b = make_tenant("limited"), make_tenant("neighbour")
    put = client.put(
        f"/v1/admin/tenants/{a.id}/quotas", json={"max_running_jobs": 1}, headers=admin_headers
    )
    assert put.status_code == 200, put.text
    records = [json.loads(line) for line in SAMPLE.read_text().splitlines()[:200]]

    a_ids = [_submit(client, a, records) for _ in range(3)]
    b_id = _submit(client, b, records, **{"Idempotency-Key": "b-first"})
    cancelled = _submit(client, a, records)  # held behind the others, then cancelled
    assert client.post(f"/v1/jobs/{cancelled}/cancel", headers=a.headers).status_code == 200

    a_jobs = [wait_for_job(client, a.headers, job_id) for job_id in a_ids]
    b_job = wait_for_job(client, b.headers, b_id)
    assert [j["state"] for j in [*a_jobs, b_job]] == ["succeeded"] * 4, workers.log("compute")

    assert "job held" in workers.log("orchestration")  # the limit was what held them
    # At most one of A's jobs ran at any moment: each started after the previous ended.
    runs = sorted((_at(j["started_at"]), _at(j["finished_at"])) for j in a_jobs)
    for (_, finished), (started, _) in pairwise(runs):
        assert started >= finished, runs
    # B's job did not queue behind A's: it waited less than A's last job, and it ran
    # while A still had jobs waiting.
    b_wait = _at(b_job["started_at"]) - _at(b_job["created_at"])
    last_a = max(a_jobs, key=lambda j: j["started_at"])
    assert b_wait < _at(last_a["started_at"]) - _at(last_a["created_at"])
    assert _at(b_job["started_at"]) < _at(last_a["started_at"])

    # Every final state is one jobs.completed record (the cancelled one included).
    finished = _finished_jobs_by_tenant()
    totals = _usage_totals()
    completed = {t: n for t, m, _, n in totals if m == "jobs.completed"}
    assert completed == finished == {a.id: 4, b.id: 1}

    # A redelivered finalize and a replayed submission change no total.
    log_lines = workers.log("distribution").count('"job finished"')
    default_publisher().publish(
        Publication(TaskName.FINALIZE, "normal", a.slug, {"tenant_id": a.id, "job_id": a_ids[0]})
    )
    wait_until(
        lambda: workers.log("distribution").count('"job finished"') > log_lines,
        60,
        "the redelivered finalize to run",
    )
    replay = client.post(
        "/v1/jobs",
        headers=b.headers | {"Idempotency-Key": "b-first"},
        json={"pipeline": PIPELINE, "records": records},
    )
    assert replay.headers.get("Idempotent-Replayed") == "true"
    assert replay.json()["id"] == b_id
    assert _usage_totals() == totals
