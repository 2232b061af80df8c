"""The API's Prometheus endpoints: /metrics (process families), /metrics/tenants (admin,
top-N tenants plus "other") and /v1/metrics (a tenant's own series, metrics:read)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from conftest import TenantFixture, clear_process_caches
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from celeriac.platform.api.app import create_app
from celeriac.platform.db import get_sessionmaker
from celeriac.platform.dispatch import get_dispatcher
from celeriac.platform.jobs.pipelines import ANALYZER, DATASET, PluginInfo, register_plugins
from celeriac.platform.ops.tenant_metrics import TopTenantsCollector
from celeriac.platform.queues import Pool
from celeriac.platform.settings import Settings, get_settings

ALL = ["jobs:write", "jobs:read", "metrics:read"]
SPEC = {"datasets": [{"name": "tabular"}], "analyzers": [{"name": "summary"}]}


@pytest.fixture(autouse=True)
def _registry(api_settings: Settings) -> None:
    with get_sessionmaker().begin() as session:
        register_plugins(
            session,
            [
                PluginInfo(DATASET, "tabular", "1.0", {"type": "object"}, produces="table"),
                PluginInfo(ANALYZER, "summary", "1.0", {"type": "object"}, accepts=("table",)),
            ],
        )


@pytest.fixture
def busy_pool(api_settings: Settings) -> None:
    """A live worker with no free slot: the dispatcher keeps every job in its tenant queue
    (without one it lets a message into the ready queue)."""
    dispatcher = get_dispatcher()
    assert dispatcher is not None
    dispatcher.register_capacity(Pool.ORCHESTRATION, "orchestration@busy", 0)


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def _value(text: str, name: str, **labels: str) -> float:
    return _samples(text).get((name, tuple(sorted(labels.items()))), 0.0)


def _submit(client: TestClient, tenant: TenantFixture, priority: str = "normal") -> str:
    answer = client.post(
        "/v1/jobs",
        headers=tenant.headers,
        json={"pipeline": SPEC, "priority": priority, "records": [{"a": 1}]},
    )
    assert answer.status_code == 202, answer.text
    return str(answer.json()["id"])


def test_metrics_count_requests_by_route_template_and_jobs_by_band(
    client: TestClient, make_tenant: Callable[..., TenantFixture]
) -> None:
    tenant = make_tenant("metered", scopes=ALL)
    before = client.get("/metrics").text
    for _ in range(3):
        _submit(client, tenant, "high")
    job_id = _submit(client, tenant, "low")
    assert client.get(f"/v1/jobs/{job_id}", headers=tenant.headers).status_code == 200
    assert (
        client.get(
            "/v1/jobs/00000000-0000-0000-0000-000000000000", headers=tenant.headers
        ).status_code
        == 404
    )
    answer = client.get("/metrics")
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/plain")
    after = answer.text

    def grew(name: str, **labels: str) -> float:
        return _value(after, name, **labels) - _value(before, name, **labels)

    assert grew("celeriac_jobs_submitted_total", band="high") == 3
    assert grew("celeriac_jobs_submitted_total", band="low") == 1
    posts = dict(route="/v1/jobs", method="POST", status_class="2xx")
    assert grew("celeriac_http_requests_total", **posts) == 4
    assert grew("celeriac_http_request_duration_seconds_count", **posts) == 4
    # The route template, never the path: job ids make no series.
    by_id = dict(route="/v1/jobs/{job_id}", method="GET")
    assert grew("celeriac_http_requests_total", **by_id, status_class="2xx") == 1
    assert grew("celeriac_http_requests_total", **by_id, status_class="4xx") == 1
    assert job_id not in after
    assert tenant.id not in after
    assert tenant.slug not in after


def test_tenant_metrics_show_only_the_callers_own_series(
    client: TestClient, make_tenant: Callable[..., TenantFixture], busy_pool: None
) -> None:
    mine = make_tenant("mine", scopes=ALL)
    theirs = make_tenant("theirs", scopes=ALL)
    _submit(client, mine, "high")
    for _ in range(5):
        _submit(client, theirs, "low")
    own = client.get("/v1/metrics", headers=mine.headers)
    assert own.status_code == 200, own.text
    text = own.text
    # Without workers the start_job messages wait in the tenants' orchestration queues.
    assert _value(text, "celeriac_backlog", pool="orchestration", band="high") == 1
    assert _value(text, "celeriac_backlog", pool="orchestration", band="low") == 0
    assert _value(text, "celeriac_running_jobs") == 0
    assert _value(text, "celeriac_jobs_finished_total", state="succeeded") == 0
    assert _value(text, "celeriac_job_duration_seconds_count") == 0
    assert "theirs" not in text
    assert theirs.id not in text
    other = client.get("/v1/metrics", headers=theirs.headers).text
    assert _value(other, "celeriac_backlog", pool="orchestration", band="low") == 5


def test_tenant_metrics_need_the_metrics_read_scope(
    client: TestClient, make_tenant: Callable[..., TenantFixture]
) -> None:
    tenant = make_tenant("noscope", scopes=["jobs:read"])
    answer = client.get("/v1/metrics", headers=tenant.headers)
    assert answer.status_code == 403
    assert answer.headers["content-type"] == "application/problem+json"
    assert client.get("/v1/metrics").status_code == 401


def test_admin_tenant_view_is_bounded_to_top_n_and_other(
    client: TestClient,
    make_tenant: Callable[..., TenantFixture],
    admin_headers: dict[str, str],
    busy_pool: None,
) -> None:
    tenants = [make_tenant(f"busy-{i}", scopes=ALL) for i in range(4)]
    for count, tenant in zip((6, 4, 2, 1), tenants, strict=True):
        for _ in range(count):
            _submit(client, tenant)
    assert client.get("/metrics/tenants").status_code == 401
    answer = client.get("/metrics/tenants", headers=admin_headers)
    assert answer.status_code == 200, answer.text
    text = answer.text
    # Four tenants are within the default top 20: each is named, "other" is empty.
    assert _value(text, "celeriac_tenant_backlog", tenant="busy-0") == 6
    assert _value(text, "celeriac_tenant_backlog", tenant="busy-3") == 1
    assert _value(text, "celeriac_tenant_backlog", tenant="other") == 0
    assert _value(text, "celeriac_tenant_oldest_age_seconds", tenant="busy-0") > 0


def test_admin_tenant_view_folds_the_rest_into_other(
    client: TestClient, make_tenant: Callable[..., TenantFixture], busy_pool: None
) -> None:
    tenants = [make_tenant(f"fold-{i}", scopes=ALL) for i in range(4)]
    for count, tenant in zip((6, 4, 2, 1), tenants, strict=True):
        for _ in range(count):
            _submit(client, tenant)
    with get_sessionmaker()() as session:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(TopTenantsCollector(session, get_dispatcher(), top_n=2))
        text = generate_latest(registry).decode()
    names = {labels for (name, labels) in _samples(text) if name == "celeriac_tenant_backlog"}
    assert names == {(("tenant", "fold-0"),), (("tenant", "fold-1"),), (("tenant", "other"),)}
    assert _value(text, "celeriac_tenant_backlog", tenant="other") == 3


def test_quota_usage_and_cache_families_count_what_happened(
    client: TestClient, make_tenant: Callable[..., TenantFixture], admin_headers: dict[str, str]
) -> None:
    """A refused burst counts a quota rejection by its policy, an accepted job its usage
    record by metric, and the shared cache's look-ups count hits and misses."""
    tenant = make_tenant("counted", scopes=ALL)
    limited = client.put(
        f"/v1/admin/tenants/{tenant.id}/quotas",
        headers=admin_headers,
        json={"requests_per_second": 1, "request_burst": 1},
    )
    assert limited.status_code == 200, limited.text
    before = client.get("/metrics").text
    answers = [
        client.post(
            "/v1/jobs", headers=tenant.headers, json={"pipeline": SPEC, "records": [{"a": 1}]}
        )
        for _ in range(3)
    ]
    statuses = sorted(a.status_code for a in answers)
    assert statuses[0] == 202, [a.text for a in answers]
    assert statuses[-1] == 429, [a.text for a in answers]
    after = client.get("/metrics").text
    refused = [a for a in answers if a.status_code == 429]
    policy = refused[0].json()["policy"]

    def grew(name: str, **labels: str) -> float:
        return _value(after, name, **labels) - _value(before, name, **labels)

    assert grew("celeriac_quota_rejections_total", policy=policy) == len(refused)
    accepted = statuses.count(202)
    assert grew("celeriac_usage_records_total", metric="jobs.submitted") == accepted
    looked_up = sum(
        grew("celeriac_cache_requests_total", result=result) for result in ("hit", "miss")
    )
    assert looked_up > 0


def test_kms_calls_are_counted_by_operation(
    api_settings: Settings,
    aws: Any,
    monkeypatch: pytest.MonkeyPatch,
    admin_headers: dict[str, str],
) -> None:
    """With tenant keys in KMS (a moto server on loopback), creating a tenant and storing
    its first job call KMS, and each call is counted by its operation."""
    for name, value in aws.settings_env(aws.new_bucket()).items():
        monkeypatch.setenv(f"CELERIAC_{name}", value)
    clear_process_caches()
    settings = get_settings()
    with get_sessionmaker().begin() as session:
        register_plugins(
            session,
            [
                PluginInfo(DATASET, "tabular", "1.0", {"type": "object"}, produces="table"),
                PluginInfo(ANALYZER, "summary", "1.0", {"type": "object"}, accepts=("table",)),
            ],
        )
    with TestClient(create_app(settings), raise_server_exceptions=False) as kms_client:
        before = kms_client.get("/metrics").text
        created = kms_client.post(
            "/v1/admin/tenants", json={"slug": "keyed", "name": "keyed"}, headers=admin_headers
        )
        assert created.status_code == 201, created.text
        key = kms_client.post(
            f"/v1/admin/tenants/{created.json()['id']}/keys",
            json={"scopes": ALL},
            headers=admin_headers,
        ).json()["key"]
        answer = kms_client.post(
            "/v1/jobs",
            headers={"Authorization": f"Bearer {key}"},
            json={"pipeline": SPEC, "records": [{"a": 1}]},
        )
        assert answer.status_code == 202, answer.text
        after = kms_client.get("/metrics").text
    calls = {
        labels: value - _samples(before).get((name, labels), 0.0)
        for (name, labels), value in _samples(after).items()
        if name == "celeriac_kms_calls_total"
    }
    operations = {dict(labels)["operation"] for labels, grown in calls.items() if grown > 0}
    assert {"create_key", "generate_data_key"} <= operations, calls
