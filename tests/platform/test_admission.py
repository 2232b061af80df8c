"""Request admission (platform/api/admission.py): a 401 or 403 consumes nothing (rate
limit, monthly job quota, Idempotency-Key), and an Idempotency-Key replay is a request like
any other for the rate limit, though not a new job."""

from __future__ import annotations

import re
from collections.abc import Callable

import httpx
import pytest
from conftest import TenantFixture
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from celeriac.platform.api import app as app_module
from celeriac.platform.db import get_engine, get_sessionmaker
from celeriac.platform.jobs.pipelines import ANALYZER, DATASET, PluginInfo, register_plugins
from celeriac.platform.models import Job
from celeriac.platform.settings import Settings

from worker_support import wait_until

JOB = {
    "pipeline": {"datasets": [{"name": "tabular"}], "analyzers": [{"name": "summary"}]},
    "records": [{"n": 1}],
}
_REQUESTS = re.compile(r'"requests";r=(\d+);')
_MONTHLY = re.compile(r'"jobs-monthly";r=(\d+);')


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


def _jobs_of(tenant: TenantFixture) -> int:
    with get_engine().connect() as conn:
        query = select(func.count()).select_from(Job).where(Job.tenant_id == tenant.id)
        return int(conn.execute(query).scalar_one())


def _set_quotas(client: TestClient, admin: dict[str, str], tenant: TenantFixture, **q: int) -> None:
    answer = client.put(f"/v1/admin/tenants/{tenant.id}/quotas", json=q, headers=admin)
    assert answer.status_code == 200, answer.text


def _remaining(pattern: re.Pattern[str], answer: httpx.Response) -> int:
    found = pattern.search(answer.headers.get("RateLimit", ""))
    assert found is not None, answer.headers
    return int(found.group(1))


def test_a_401_or_403_consumes_no_rate_limit_quota_or_idempotency_key(
    client: TestClient,
    make_tenant: Callable[..., TenantFixture],
    admin_headers: dict[str, str],
    registry: None,
) -> None:
    tenant = make_tenant()
    reader = client.post(
        f"/v1/admin/tenants/{tenant.id}/keys", json={"scopes": ["jobs:read"]}, headers=admin_headers
    )
    assert reader.status_code == 201, reader.text
    reader_headers = {"Authorization": f"Bearer {reader.json()['key']}"}
    _set_quotas(client, admin_headers, tenant, request_burst=3, jobs_per_month=1)
    key = {"Idempotency-Key": "first"}
    bad = {"Authorization": "Bearer ck_live_" + "x" * 40}
    for _ in range(5):  # more than the burst and the month's quota together
        unknown = client.post("/v1/jobs", json=JOB, headers=bad | key)
        assert unknown.status_code == 401, unknown.text
        refused = client.post("/v1/jobs", json=JOB, headers=reader_headers | key)
        assert refused.status_code == 403, refused.text
        assert "RateLimit" not in refused.headers

    # The tenant's own key with the same Idempotency-Key: a first request, with the whole
    # burst and the month's one job still there.
    first = client.post("/v1/jobs", json=JOB, headers=tenant.headers | key)
    assert first.status_code == 202, first.text
    assert "Idempotent-Replayed" not in first.headers
    assert _remaining(_REQUESTS, first) >= 2  # 3 at once, this one counted
    assert _remaining(_MONTHLY, first) == 0
    assert _jobs_of(tenant) == 1


def test_a_replay_counts_as_a_request_but_not_as_a_job(
    client: TestClient,
    make_tenant: Callable[..., TenantFixture],
    admin_headers: dict[str, str],
    registry: None,
) -> None:
    tenant = make_tenant()
    _set_quotas(client, admin_headers, tenant, request_burst=3, jobs_per_month=2)
    key = tenant.headers | {"Idempotency-Key": "again"}
    first = client.post("/v1/jobs", json=JOB, headers=key)
    assert first.status_code == 202, first.text
    assert _remaining(_MONTHLY, first) == 1

    # Replays answer with the first job and carry the rate limit's headers; sent faster
    # than the bucket refills (one a second), they run into its 429 like any request.
    answers = []
    for _ in range(30):
        answers.append(client.post("/v1/jobs", json=JOB, headers=key))
        if answers[-1].status_code == 429:
            break
    *replays, limited = answers
    assert limited.status_code == 429, limited.text
    assert limited.json()["policy"] == "requests"
    assert replays, "the burst of 3 admits the first replay"
    for replay in replays:
        assert replay.status_code == 202
        assert replay.headers["Idempotent-Replayed"] == "true"
        assert replay.json()["id"] == first.json()["id"]
        assert _REQUESTS.search(replay.headers["RateLimit"]) is not None

    # No replay took the month's second job: a new submission gets it once the bucket
    # has refilled.
    def admitted() -> httpx.Response | None:
        answer = client.post("/v1/jobs", json=JOB, headers=tenant.headers)
        rate_limited = answer.status_code == 429 and answer.json()["policy"] == "requests"
        return None if rate_limited else answer

    second = wait_until(admitted, 30, "the rate limit to admit a request again")
    assert second.status_code == 202, second.text
    assert _remaining(_MONTHLY, second) == 0
    assert _jobs_of(tenant) == 2


def test_the_middleware_order_in_the_apps_docstring_is_the_apps(client: TestClient) -> None:
    """platform/api/app.py says what a request passes, outermost first: it stays true."""
    documented = re.findall(r"^\d+\. ``(\w+)``", app_module.__doc__ or "", re.MULTILINE)
    app = client.app
    assert isinstance(app, FastAPI)
    installed = [m.cls.__name__ for m in app.user_middleware]  # type: ignore[attr-defined]
    assert installed == [name for name in documented if name in installed]
    assert set(installed) <= set(documented), installed
