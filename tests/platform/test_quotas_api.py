"""Quotas through the API: admins override a tenant's plan limits (audited), tenants read
theirs with their current use, and the request rate limit answers 429 with the IETF
RateLimit headers. 401 and 403 answers consume nothing."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator

import pytest
import redis
from conftest import TenantFixture
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from celeriac.platform.auth.jwt import Role, mint_token
from celeriac.platform.db import get_engine, get_sessionmaker
from celeriac.platform.dispatch import get_dispatcher
from celeriac.platform.jobs.pipelines import ANALYZER, DATASET, PluginInfo, register_plugins
from celeriac.platform.models import AuditEntry, Job, UsageRecord, utcnow
from celeriac.platform.quotas.monthly import reconcile_counters
from celeriac.platform.quotas.plans import PLANS
from celeriac.platform.quotas.weights import sync_weights
from celeriac.platform.settings import Settings

FREE = PLANS["free"].as_dict()


@pytest.fixture
def tenant(make_tenant: Callable[..., TenantFixture]) -> TenantFixture:
    return make_tenant("quota-tenant")


def _quotas_path(tenant: TenantFixture) -> str:
    return f"/v1/admin/tenants/{tenant.id}/quotas"


def test_admin_overrides_are_audited_and_null_follows_the_plan(
    client: TestClient, tenant: TenantFixture, admin_headers: dict[str, str]
) -> None:
    path = _quotas_path(tenant)
    first = client.get(path, headers=admin_headers).json()
    assert first["plan"] == "free"
    assert first["limits"] == FREE == first["plan_defaults"]
    assert set(first["overrides"].values()) == {None}
    assert first["updated_at"] is None

    put = client.put(path, json={"max_running_jobs": 1, "jobs_per_month": 5}, headers=admin_headers)
    assert put.status_code == 200, put.text
    assert put.json()["limits"] == FREE | {"max_running_jobs": 1, "jobs_per_month": 5}
    # PUT replaces: what is left out follows the plan again
    again = client.put(path, json={"jobs_per_month": 7}, headers=admin_headers).json()
    assert again["limits"] == FREE | {"jobs_per_month": 7}
    assert again["overrides"]["max_running_jobs"] is None

    with get_sessionmaker()() as session:
        entries = session.scalars(
            select(AuditEntry)
            .where(AuditEntry.action == "tenant.quotas.update")
            .order_by(AuditEntry.occurred_at)
        ).all()
    assert [(e.actor, str(e.tenant_id)) for e in entries] == [("ops@test", tenant.id)] * 2
    assert entries[1].details["before"]["max_running_jobs"] == 1
    assert entries[1].details["after"]["jobs_per_month"] == 7
    assert entries[1].request_id

    # the plan's defaults are the limits: a plan change moves them
    client.patch(f"/v1/admin/tenants/{tenant.id}", json={"plan": "pro"}, headers=admin_headers)
    pro = client.get(path, headers=admin_headers).json()
    assert pro["limits"] == PLANS["pro"].as_dict() | {"jobs_per_month": 7}


@pytest.mark.parametrize(
    "body",
    [
        {"max_running_jobs": 0},
        {"jobs_per_month": -1},
        {"colour": 1},
        {"request_burst": 3_000_000_000},
        {"max_payload_bytes": "big"},
    ],
)
def test_invalid_overrides_are_422_and_change_nothing(
    client: TestClient, tenant: TenantFixture, admin_headers: dict[str, str], body: object
) -> None:
    answer = client.put(_quotas_path(tenant), json=body, headers=admin_headers)
    assert answer.status_code == 422
    assert answer.headers["content-type"] == ("application/problem+json")
    assert client.get(_quotas_path(tenant), headers=admin_headers).json()["updated_at"] is None


def test_quota_routes_check_roles_and_tenants(
    client: TestClient,
    tenant: TenantFixture,
    api_settings: Settings,
    admin_headers: dict[str, str],
) -> None:
    billing = {"Authorization": f"Bearer {mint_token(api_settings, 'bill', Role.BILLING)}"}
    assert client.get(_quotas_path(tenant), headers=billing).status_code == 403
    assert client.put(_quotas_path(tenant), json={}, headers=tenant.headers).status_code == 401
    unknown = "/v1/admin/tenants/00000000-0000-0000-0000-000000000000/quotas"
    assert client.get(unknown, headers=admin_headers).status_code == 404
    assert client.put(unknown, json={}, headers=admin_headers).status_code == 404
    client.delete(f"/v1/admin/tenants/{tenant.id}", headers=admin_headers)
    # a deleted tenant's sub-resources are gone (test_bad_input: one rule for all of them)
    assert client.put(_quotas_path(tenant), json={}, headers=admin_headers).status_code == 404


def test_a_tenant_reads_its_limits_and_use(
    client: TestClient, tenant: TenantFixture, admin_headers: dict[str, str]
) -> None:
    client.put(_quotas_path(tenant), json={"max_webhook_targets": 4}, headers=admin_headers)
    client.app.dependency_overrides.clear()  # type: ignore[attr-defined]
    answer = client.get("/v1/quotas", headers=tenant.headers)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["plan"] == "free"
    assert body["limits"] == FREE | {"max_webhook_targets": 4}
    usage = body["usage"]
    assert usage["webhook_targets"] == {"limit": 4, "used": 0, "remaining": 4, "resets_at": None}
    assert usage["running_jobs"]["used"] == 0
    assert usage["jobs_this_month"]["limit"] == FREE["jobs_per_month"]
    assert usage["jobs_this_month"]["resets_at"].endswith("T00:00:00Z")


_POLICY = re.compile(r'^"requests";q=(\d+);w=(\d+)$')
_STATUS = re.compile(r'^"requests";r=(\d+);t=(\d+)$')


def test_rate_limit_headers_429_and_failed_auth_consumes_nothing(
    client: TestClient,
    make_tenant: Callable[..., TenantFixture],
    admin_headers: dict[str, str],
) -> None:
    tenant = make_tenant(scopes=["jobs:read"])
    client.put(
        _quotas_path(tenant),
        json={"requests_per_second": 1, "request_burst": 3},
        headers=admin_headers,
    )
    bad = {"Authorization": "Bearer ck_live_" + "x" * 40}
    for _ in range(5):  # neither a bad key nor a missing scope is counted
        assert client.get("/v1/jobs", headers=bad).status_code == 401
        assert client.get("/v1/webhooks", headers=tenant.headers).status_code == 403

    seen = []
    for _ in range(3):
        answer = client.get("/v1/jobs", headers=tenant.headers)
        assert answer.status_code == 200, answer.text
        policy = _POLICY.match(answer.headers["RateLimit-Policy"])
        status = _STATUS.match(answer.headers["RateLimit"])
        assert policy is not None
        assert status is not None
        assert policy.groups() == ("3", "3")
        seen.append(int(status.group(1)))
    assert seen == [2, 1, 0]
    refused = client.get("/v1/jobs", headers=tenant.headers)
    assert refused.status_code == 429
    assert refused.headers["content-type"] == "application/problem+json"
    problem = refused.json()
    assert problem["type"].endswith("/quota-exceeded")
    assert problem["policy"] == "requests"
    assert int(refused.headers["Retry-After"]) >= 1
    assert _STATUS.match(refused.headers["RateLimit"]).group(1) == "0"  # type: ignore[union-attr]
    # other tenants have buckets of their own
    other = make_tenant()
    assert client.get("/v1/jobs", headers=other.headers).status_code == 200


SPEC = {"datasets": [{"name": "tabular"}], "analyzers": [{"name": "summary"}]}


@pytest.fixture
def registry(api_settings: Settings) -> None:
    with get_sessionmaker().begin() as session:
        register_plugins(
            session,
            [
                PluginInfo(DATASET, "tabular", "1.0", {"type": "object"}, produces="table"),
                PluginInfo(ANALYZER, "summary", "1.0", {"type": "object"}, accepts=("table",)),
            ],
        )


def _job_count() -> int:
    with get_engine().connect() as conn:
        return int(conn.execute(select(func.count()).select_from(Job)).scalar_one())


def _submitted_records() -> int:
    with get_engine().connect() as conn:
        return int(
            conn.execute(
                select(func.count())
                .select_from(UsageRecord)
                .where(UsageRecord.metric == "jobs.submitted")
            ).scalar_one()
        )


def test_payload_over_the_tenants_limits_is_413_and_stores_nothing(
    client: TestClient, tenant: TenantFixture, admin_headers: dict[str, str], registry: None
) -> None:
    client.put(
        _quotas_path(tenant),
        json={"max_payload_bytes": 600, "max_records_per_job": 3},
        headers=admin_headers,
    )
    ok = client.post(
        "/v1/jobs", json={"pipeline": SPEC, "records": [{"n": 1}] * 3}, headers=tenant.headers
    )
    assert ok.status_code == 202, ok.text
    too_many = client.post(
        "/v1/jobs", json={"pipeline": SPEC, "records": [{"n": 1}] * 4}, headers=tenant.headers
    )
    assert too_many.status_code == 413
    assert too_many.json()["policy"] == "records-per-job"
    assert "limit is 3" in too_many.json()["detail"]
    big = {"pipeline": SPEC, "records": [{"text": "x" * 700}]}
    too_big = client.post("/v1/jobs", json=big, headers=tenant.headers)
    assert too_big.status_code == 413
    assert too_big.json()["policy"] == "payload-bytes"
    assert too_big.headers["content-type"] == "application/problem+json"

    def chunked() -> Iterator[bytes]:  # no Content-Length: the body read is measured
        yield json.dumps(big).encode()

    streamed = client.post(
        "/v1/jobs", content=chunked(), headers=tenant.headers | {"Content-Type": "application/json"}
    )
    assert streamed.status_code == 413
    upload = client.post(
        "/v1/jobs",
        headers=tenant.headers,
        data={"pipeline": "full"},
        files={"file": ("x.ndjson", b'{"t": "' + b"y" * 700 + b'"}\n', "application/x-ndjson")},
    )
    assert upload.status_code == 413
    assert upload.json()["policy"] == "payload-bytes"
    assert _job_count() == 1
    assert _submitted_records() == 1


def test_monthly_job_quota_is_429_replays_do_not_count_and_raising_it_applies(
    client: TestClient,
    tenant: TenantFixture,
    admin_headers: dict[str, str],
    registry: None,
    api_settings: Settings,
) -> None:
    client.put(_quotas_path(tenant), json={"jobs_per_month": 2}, headers=admin_headers)
    job = {"pipeline": SPEC, "records": [{"n": 1}]}
    first = client.post("/v1/jobs", json=job, headers=tenant.headers | {"Idempotency-Key": "a"})
    assert first.status_code == 202, first.text
    assert '"jobs-monthly";q=2;w=' in first.headers["RateLimit-Policy"]
    assert '"jobs-monthly";r=1;t=' in first.headers["RateLimit"]
    replay = client.post("/v1/jobs", json=job, headers=tenant.headers | {"Idempotency-Key": "a"})
    assert replay.status_code == 202
    assert replay.headers["Idempotent-Replayed"] == "true"
    assert replay.json()["id"] == first.json()["id"]
    second = client.post("/v1/jobs", json=job, headers=tenant.headers)
    assert second.status_code == 202
    assert '"jobs-monthly";r=0;' in second.headers["RateLimit"]

    refused = client.post("/v1/jobs", json=job, headers=tenant.headers)
    assert refused.status_code == 429, refused.text
    problem = refused.json()
    assert problem["code"] == "quota-exceeded"
    assert problem["policy"] == "jobs-monthly"
    assert "quota of 2 jobs per calendar month is used up" in problem["detail"]
    assert int(refused.headers["Retry-After"]) >= 1
    assert _job_count() == 2
    assert _submitted_records() == 2
    # A retried request still gets its first answer, the quota used up or not.
    late_replay = client.post(
        "/v1/jobs", json=job, headers=tenant.headers | {"Idempotency-Key": "a"}
    )
    assert late_replay.status_code == 202
    assert late_replay.json()["id"] == first.json()["id"]

    # A lost counter (Redis flushed) is seeded again from the usage records.
    cache = redis.Redis.from_url(str(api_settings.redis_url))
    assert cache.delete(*cache.keys("celeriac:jobs:*")) == 1
    again = client.post("/v1/jobs", json=job, headers=tenant.headers)
    assert again.status_code == 429

    client.put(_quotas_path(tenant), json={"jobs_per_month": 3}, headers=admin_headers)
    after_raise = client.post("/v1/jobs", json=job, headers=tenant.headers)
    assert after_raise.status_code == 202, after_raise.text
    assert _job_count() == 3
    assert _submitted_records() == 3


def test_a_drifted_monthly_counter_is_corrected_after_two_runs(
    client: TestClient,
    tenant: TenantFixture,
    admin_headers: dict[str, str],
    registry: None,
    api_settings: Settings,
) -> None:
    job = {"pipeline": SPEC, "records": [{"n": 1}]}
    assert client.post("/v1/jobs", json=job, headers=tenant.headers).status_code == 202
    cache = redis.Redis.from_url(str(api_settings.redis_url))
    (key,) = cache.keys("celeriac:jobs:*")
    assert cache.get(key) == b"1"
    cache.set(key, 40, keepttl=True)  # say, reservations of a process that died
    now = utcnow()
    assert reconcile_counters(cache, now) == 0  # seen once: may be in flight
    assert reconcile_counters(cache, now) == 1
    assert cache.get(key) == b"1"
    assert cache.ttl(key) > 0
    cache.incr(key)  # moving: left alone
    assert reconcile_counters(cache, now) == 0


def test_a_submission_that_fails_gives_its_monthly_reservation_back(
    client: TestClient, tenant: TenantFixture, admin_headers: dict[str, str], registry: None
) -> None:
    client.put(
        _quotas_path(tenant),
        json={"jobs_per_month": 1, "max_records_per_job": 2},
        headers=admin_headers,
    )
    for bad in (
        {"pipeline": "nope", "records": [{"n": 1}]},  # 422
        {"pipeline": SPEC, "records": [{"n": 1}] * 3},
    ):  # 413
        answer = client.post("/v1/jobs", json=bad, headers=tenant.headers)
        assert answer.status_code in (413, 422), answer.text
    malformed = client.post(
        "/v1/jobs", content=b"{", headers=tenant.headers | {"Content-Type": "application/json"}
    )
    assert malformed.status_code == 400
    ok = client.post(
        "/v1/jobs", json={"pipeline": SPEC, "records": [{"n": 1}]}, headers=tenant.headers
    )
    assert ok.status_code == 202, ok.text
    assert '"jobs-monthly";r=0;' in ok.headers["RateLimit"]
    over = client.post(
        "/v1/jobs", json={"pipeline": SPEC, "records": [{"n": 1}]}, headers=tenant.headers
    )
    assert over.status_code == 429
    assert over.json()["policy"] == "jobs-monthly"
    assert _job_count() == 1


def test_dispatch_weight_follows_the_plan_and_an_admin_override_reaches_the_dispatcher(
    client: TestClient,
    make_tenant: Callable[..., TenantFixture],
    admin_headers: dict[str, str],
    api_settings: Settings,
) -> None:
    dispatcher = get_dispatcher()
    assert dispatcher is not None
    tenant = make_tenant("weighty")
    path = _quotas_path(tenant)
    assert client.get(path, headers=admin_headers).json()["limits"]["dispatch_weight"] == 1
    assert dispatcher.weights() == {}  # the free plan's weight is the default

    moved = client.patch(
        f"/v1/admin/tenants/{tenant.id}", json={"plan": "enterprise"}, headers=admin_headers
    )
    assert moved.status_code == 200, moved.text
    assert dispatcher.weights() == {"weighty": 4}

    put = client.put(path, json={"dispatch_weight": 7}, headers=admin_headers)
    assert put.status_code == 200, put.text
    assert put.json()["limits"]["dispatch_weight"] == 7
    assert put.json()["plan_defaults"]["dispatch_weight"] == 4
    assert dispatcher.weights() == {"weighty": 7}
    with get_sessionmaker()() as session:
        entry = session.scalars(
            select(AuditEntry).where(AuditEntry.action == "tenant.quotas.update")
        ).one()
    assert entry.details["before"]["dispatch_weight"] is None
    assert entry.details["after"]["dispatch_weight"] == 7

    for bad in (0, 101, "heavy"):
        refused = client.put(path, json={"dispatch_weight": bad}, headers=admin_headers)
        assert refused.status_code == 422
        assert refused.headers["content-type"] == "application/problem+json"
    assert dispatcher.weights() == {"weighty": 7}  # a refused change changes nothing

    # A Redis restart loses the hash: the reconciler's sync rewrites it from the database.
    dispatcher.client.delete("celeriac:weights")
    assert sync_weights() == 1
    assert dispatcher.weights() == {"weighty": 7}

    assert client.put(path, json={}, headers=admin_headers).status_code == 200
    assert dispatcher.weights() == {"weighty": 4}  # back to the plan's
