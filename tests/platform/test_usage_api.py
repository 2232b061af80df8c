"""Billing's usage API on real PostgreSQL: filtered keyset pages (JSON and CSV), totals per
period that equal the records, adjustments that reference the original (audited), and
records the database refuses to change."""

from __future__ import annotations

import csv
import io
import uuid
from collections import defaultdict
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from conftest import TenantFixture
from fastapi.testclient import TestClient
from sqlalchemy import delete, func, select, text, update
from sqlalchemy.exc import IntegrityError

from celeriac.platform.auth.jwt import Role, mint_token
from celeriac.platform.db import get_engine, get_sessionmaker
from celeriac.platform.jobs.pipelines import ANALYZER, DATASET, PluginInfo, register_plugins
from celeriac.platform.models import FINAL_JOB_STATES, AuditEntry, Job, UsageRecord
from celeriac.platform.settings import Settings
from celeriac.platform.usage.metrics import Metric, insert_usage, usage_row
from celeriac.platform.usage.schemas import RECORD_COLUMNS

SPEC = {"datasets": [{"name": "tabular"}], "analyzers": [{"name": "summary"}]}
BASE = datetime(2026, 1, 30, 22, 0, tzinfo=UTC)


@pytest.fixture
def billing_headers(api_settings: Settings) -> dict[str, str]:
    return {"Authorization": f"Bearer {mint_token(api_settings, 'billing@test', Role.BILLING)}"}


@pytest.fixture
def usage(client: TestClient, make_tenant: Callable[..., TenantFixture]) -> list[TenantFixture]:
    """Two tenants with submitted and cancelled jobs, and records spread over hours, days
    and two months."""
    with get_sessionmaker().begin() as session:
        register_plugins(
            session,
            [
                PluginInfo(DATASET, "tabular", "1.0", {"type": "object"}, produces="table"),
                PluginInfo(ANALYZER, "summary", "1.0", {"type": "object"}, accepts=("table",)),
            ],
        )
    tenants = [make_tenant("billed-a"), make_tenant("billed-b")]
    for index, tenant in enumerate(tenants):
        for _ in range(index + 2):
            job = client.post(
                "/v1/jobs", json={"pipeline": SPEC, "records": [{"n": 1}]}, headers=tenant.headers
            ).json()
        assert client.post(f"/v1/jobs/{job['id']}/cancel", headers=tenant.headers).is_success
        rows = [
            usage_row(
                cause=f"test_{index}_{n}",
                tenant_id=uuid.UUID(tenant.id),
                metric=Metric.COMPUTE_SECONDS,
                quantity=Decimal(n) / 4,
                occurred_at=BASE + timedelta(minutes=37 * n),
                properties={"n": n},
                source="test",
            )
            for n in range(12)
        ]
        with get_sessionmaker().begin() as session:
            insert_usage(session, rows)
    return tenants


def _all_records(client: TestClient, headers: dict[str, str], **params: Any) -> list[Any]:
    found, cursor = [], None
    while True:
        page = client.get(
            "/v1/usage/records",
            headers=headers,
            params=params | ({"cursor": cursor} if cursor else {}),
        )
        assert page.status_code == 200, page.text
        found += page.json()["data"]
        cursor = page.json()["next_cursor"]
        if cursor is None:
            assert "Link" not in page.headers
            return found
        assert f"cursor={cursor}" in page.headers["Link"]


def test_records_page_in_a_stable_order_with_filters(
    client: TestClient, usage: list[TenantFixture], billing_headers: dict[str, str]
) -> None:
    with get_engine().connect() as conn:
        stored = conn.execute(select(func.count()).select_from(UsageRecord)).scalar_one()
    every = _all_records(client, billing_headers, limit=1000)
    assert len(every) == stored == 2 * 12 + 5 + 2
    paged = _all_records(client, billing_headers, limit=4)
    assert paged == every  # pages of 4 walk the same records, each once
    assert every == sorted(every, key=lambda r: (r["occurred_at"], r["id"]))
    assert set(every[0]) == set(RECORD_COLUMNS)

    a = usage[0]
    mine = _all_records(
        client,
        billing_headers,
        tenant_id=a.id,
        metric="compute.seconds",
        occurred_after=(BASE + timedelta(hours=1)).isoformat(),
        occurred_before=(BASE + timedelta(hours=4)).isoformat(),
    )
    assert [r["properties"]["n"] for r in mine] == [2, 3, 4, 5, 6]
    assert {r["tenant_id"] for r in mine} == {a.id}
    assert mine[0]["quantity"] == "0.500000"
    assert mine[0]["unit"] == "second"
    bad = client.get("/v1/usage/records", params={"cursor": "nope"}, headers=billing_headers)
    assert bad.status_code == 400
    assert bad.headers["content-type"] == "application/problem+json"


def test_csv_has_the_same_columns_and_rows(
    client: TestClient, usage: list[TenantFixture], billing_headers: dict[str, str]
) -> None:
    params = {"limit": 7}
    as_json = client.get("/v1/usage/records", params=params, headers=billing_headers)
    as_csv = client.get(
        "/v1/usage/records", params=params, headers=billing_headers | {"Accept": "text/csv"}
    )
    assert as_csv.status_code == 200
    assert as_csv.headers["content-type"].startswith("text/csv")
    assert as_csv.headers["Link"] == as_json.headers["Link"]
    rows = list(csv.DictReader(io.StringIO(as_csv.text)))
    assert list(rows[0]) == list(RECORD_COLUMNS)
    for row, record in zip(rows, as_json.json()["data"], strict=True):
        assert row["id"] == record["id"]
        assert row["quantity"] == record["quantity"]
        assert datetime.fromisoformat(row["occurred_at"]) == datetime.fromisoformat(
            record["occurred_at"]
        )
        assert row["adjusts_id"] == (record["adjusts_id"] or "")


def _truncate(at: datetime, granularity: str) -> datetime:
    at = at.astimezone(UTC)
    if granularity == "hour":
        return at.replace(minute=0, second=0, microsecond=0)
    if granularity == "day":
        return at.replace(hour=0, minute=0, second=0, microsecond=0)
    return at.replace(day=1, hour=0, minute=0, second=0, microsecond=0)


@pytest.mark.parametrize("granularity", ["hour", "day", "month"])
def test_summary_equals_the_sum_of_the_records_and_counts_finished_jobs(
    client: TestClient,
    usage: list[TenantFixture],
    billing_headers: dict[str, str],
    admin_headers: dict[str, str],
    granularity: str,
) -> None:
    records = _all_records(client, billing_headers, limit=1000)
    original = next(
        r for r in records if r["metric"] == "compute.seconds" and r["quantity"] != "0.000000"
    )
    adjusted = client.post(
        "/v1/admin/usage/adjustments",
        headers=admin_headers,
        json={"adjusts_id": original["id"], "quantity": "-0.25", "reason": "double count"},
    )
    assert adjusted.status_code == 201, adjusted.text
    records = _all_records(client, billing_headers, limit=1000)

    expected: dict[tuple[str, str, datetime], list[Decimal]] = defaultdict(list)
    for r in records:
        period = _truncate(datetime.fromisoformat(r["occurred_at"]), granularity)
        expected[(r["tenant_id"], r["metric"], period)].append(Decimal(r["quantity"]))
    answer = client.get(
        "/v1/usage/summary", params={"granularity": granularity}, headers=billing_headers
    )
    assert answer.status_code == 200, answer.text
    totals = {
        (t["tenant_id"], t["metric"], datetime.fromisoformat(t["period_start"])): (
            Decimal(t["quantity"]),
            t["records"],
        )
        for t in answer.json()["data"]
    }
    assert totals == {k: (sum(v, Decimal(0)), len(v)) for k, v in expected.items()}
    periods = {k[2] for k in totals}
    assert len(periods) > 1
    assert all(p == _truncate(p, granularity) for p in periods)

    with get_engine().connect() as conn:
        finished = dict(
            conn.execute(
                select(Job.tenant_id, func.count())
                .where(Job.state.in_(list(FINAL_JOB_STATES)))
                .group_by(Job.tenant_id)
            ).all()
        )
    completed: dict[str, Decimal] = defaultdict(Decimal)
    for (tenant_id, metric, _), (quantity, _) in totals.items():
        if metric == "jobs.completed":
            completed[tenant_id] += quantity
    assert completed == {str(t): Decimal(n) for t, n in finished.items()}
    assert set(completed) == {t.id for t in usage}


def test_adjustments_reference_the_original_are_audited_and_checked(
    client: TestClient,
    usage: list[TenantFixture],
    billing_headers: dict[str, str],
    admin_headers: dict[str, str],
) -> None:
    original = _all_records(client, billing_headers, metric="jobs.submitted")[0]

    def adjust(headers: dict[str, str], **body: Any) -> Any:
        payload = {"adjusts_id": original["id"], "quantity": "-1", "reason": "test job"} | body
        return client.post("/v1/admin/usage/adjustments", json=payload, headers=headers)

    assert adjust(billing_headers).status_code == 403
    assert adjust(admin_headers, quantity="-2").status_code == 422  # below zero
    assert adjust(admin_headers, quantity="0").status_code == 422
    assert adjust(admin_headers, adjusts_id="nope").status_code == 404
    made = adjust(admin_headers)
    assert made.status_code == 201, made.text
    correction = made.json()
    assert correction["adjusts_id"] == original["id"]
    assert correction["quantity"] == "-1.000000"
    assert (correction["tenant_id"], correction["metric"], correction["unit"]) == (
        original["tenant_id"],
        original["metric"],
        original["unit"],
    )
    assert adjust(admin_headers, adjusts_id=correction["id"]).status_code == 422
    assert adjust(admin_headers).status_code == 422  # the record already totals 0

    again = _all_records(client, billing_headers, metric="jobs.submitted")
    assert next(r for r in again if r["id"] == original["id"]) == original
    with get_sessionmaker()() as session:
        entry = session.scalars(select(AuditEntry).where(AuditEntry.action == "usage.adjust"))
        (audited,) = entry.all()
    assert audited.details["adjustment_id"] == correction["id"]
    assert audited.actor == "ops@test"


def test_the_database_refuses_to_change_or_delete_a_record(
    client: TestClient, usage: list[TenantFixture]
) -> None:
    with get_engine().connect() as conn:
        record_id = conn.execute(select(UsageRecord.id).limit(1)).scalar_one()
    for statement in (
        update(UsageRecord).where(UsageRecord.id == record_id).values(quantity=99),
        delete(UsageRecord).where(UsageRecord.id == record_id),
        text("UPDATE usage_records SET properties = '{}'"),
    ):
        with pytest.raises(IntegrityError, match="append-only"), get_engine().begin() as conn:
            conn.execute(statement)
    with get_engine().connect() as conn:
        assert (
            conn.execute(
                select(func.count()).select_from(UsageRecord).where(UsageRecord.id == record_id)
            ).scalar_one()
            == 1
        )


def test_billing_reads_every_tenant_and_a_key_needs_usage_read(
    client: TestClient, usage: list[TenantFixture], admin_headers: dict[str, str]
) -> None:
    tenant = usage[0]
    for path in ("/v1/usage/records", "/v1/usage/summary"):
        refused = client.get(path, headers=tenant.headers)
        assert refused.status_code == 403
        assert refused.json()["missing_scopes"] == ["usage:read"]
        assert client.get(path).status_code == 401
        assert client.get(path, headers={"Authorization": "Bearer ck_live_nope"}).status_code == 401
        assert client.get(path, headers=admin_headers).status_code == 200


def _usage_key(
    client: TestClient, admin_headers: dict[str, str], tenant: TenantFixture
) -> dict[str, str]:
    created = client.post(
        f"/v1/admin/tenants/{tenant.id}/keys",
        json={"scopes": ["usage:read"]},
        headers=admin_headers,
    )
    assert created.status_code == 201, created.text
    return {"Authorization": f"Bearer {created.json()['key']}"}


def test_a_tenant_reads_only_its_own_usage_records_json_and_csv(
    client: TestClient, usage: list[TenantFixture], admin_headers: dict[str, str]
) -> None:
    mine, other = usage
    headers = _usage_key(client, admin_headers, mine)
    everything = client.get("/v1/usage/records?limit=1000", headers=admin_headers).json()["data"]
    expected = sorted(r["id"] for r in everything if r["tenant_id"] == mine.id)
    assert len(expected) < len(everything)

    seen, cursor = [], None
    while True:
        params: dict[str, Any] = {"limit": 5, **({"cursor": cursor} if cursor else {})}
        page = client.get("/v1/usage/records", headers=headers, params=params).json()
        seen += [r["id"] for r in page["data"]]
        assert {r["tenant_id"] for r in page["data"]} <= {mine.id}
        if not (cursor := page["next_cursor"]):
            break
    assert sorted(seen) == expected

    csv_answer = client.get(
        "/v1/usage/records?limit=1000", headers={**headers, "Accept": "text/csv"}
    )
    assert csv_answer.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(csv_answer.text)))
    assert sorted(r["id"] for r in rows) == expected

    summary = client.get("/v1/usage/summary?granularity=month", headers=headers).json()
    assert summary["data"]
    assert {t["tenant_id"] for t in summary["data"]} == {mine.id}
    # Asking for another tenant's records is a 404, as for any of its objects.
    for path in ("/v1/usage/records", "/v1/usage/summary"):
        answer = client.get(path, params={"tenant_id": other.id}, headers=headers)
        assert answer.status_code == 404
        assert answer.headers["content-type"] == "application/problem+json"
    assert (
        client.get("/v1/usage/records", params={"tenant_id": mine.id}, headers=headers).status_code
        == 200
    )
