"""Tenant isolation: every tenant-scoped route answers 404 for another tenant's object,
never its data and never a 403 that would confirm it exists."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from typing import Any

import pytest
from conftest import TenantFixture
from fastapi.testclient import TestClient

from celeriac.platform.db import get_sessionmaker
from celeriac.platform.jobs.pipelines import ANALYZER, DATASET, PluginInfo, register_plugins
from celeriac.platform.webhooks.destinations import IPAddress
from celeriac.platform.webhooks.routes import destination_resolver

# A body that is valid for each write route, so the answer is about the object, not input.
BODIES: dict[tuple[str, str], Any] = {
    ("PATCH", "/v1/webhooks/{target_id}"): {"description": "changed"},
    ("POST", "/v1/webhooks/{target_id}/rotate-secret"): {},
    ("POST", "/v1/keys/{key_id}/roll"): {},
    ("POST", "/v1/webhooks/{target_id}/recover"): {"since": "2020-01-01T00:00:00Z"},
}


def _public(host: str, port: int) -> list[IPAddress]:
    return [ipaddress.ip_address("93.184.215.14")]


@pytest.fixture
def owner_objects(
    client: TestClient, make_tenant: Callable[..., TenantFixture]
) -> tuple[TenantFixture, dict[str, str]]:
    client.app.dependency_overrides[destination_resolver] = lambda: _public  # type: ignore[attr-defined]
    with get_sessionmaker().begin() as session:
        register_plugins(
            session,
            [
                PluginInfo(DATASET, "tabular", "1.0", {"type": "object"}, produces="table"),
                PluginInfo(ANALYZER, "summary", "1.0", {"type": "object"}, accepts=("table",)),
            ],
        )
    owner = make_tenant("owner")
    spec = {"datasets": [{"name": "tabular"}], "analyzers": [{"name": "summary"}]}
    job = client.post(
        "/v1/jobs",
        headers=owner.headers,
        json={"pipeline": spec, "records": [{"secret": "owner-data"}]},
    ).json()
    key = client.post("/v1/keys", json={"scopes": ["jobs:read"]}, headers=owner.headers).json()
    target = client.post(
        "/v1/webhooks",
        headers=owner.headers,
        json={"url": "https://hooks.example.com/x", "event_types": ["job.*"]},
    ).json()
    test = client.post(f"/v1/webhooks/{target['id']}/test", headers=owner.headers)
    assert test.status_code == 202, test.text
    return owner, {
        "job_id": job["id"],
        "key_id": key["id"],
        "target_id": target["id"],
        "message_id": test.json()["message_id"],
    }


def _tenant_operations(client: TestClient) -> list[tuple[str, str]]:
    """Every documented tenant operation on one object (the OpenAPI document lists them
    all, so a new route is walked without touching this test)."""
    paths = client.get("/openapi.json").json()["paths"]
    return [
        (method.upper(), path)
        for path, item in paths.items()
        if path.startswith("/v1/") and not path.startswith("/v1/admin") and "{" in path
        for method in item
    ]


def test_every_tenant_route_hides_other_tenants_objects(
    client: TestClient,
    make_tenant: Callable[..., TenantFixture],
    owner_objects: tuple[TenantFixture, dict[str, str]],
) -> None:
    owner, ids = owner_objects
    intruder = make_tenant("intruder")
    checked = []
    for method, template in _tenant_operations(client):
        answer = client.request(
            method,
            template.format(**ids),
            headers=intruder.headers,
            json=BODIES.get((method, template)),
        )
        assert answer.status_code == 404, (method, template, answer.text)
        assert all(value not in answer.text for value in ("owner-data", owner.id))
        checked.append((method, template))
    # New tenant routes are covered automatically; this guards against an empty walk.
    assert len(checked) >= 12, checked

    # The owner still sees everything, unchanged by the intruder's attempts.
    for path in (
        f"/v1/jobs/{ids['job_id']}",
        f"/v1/keys/{ids['key_id']}",
        f"/v1/webhooks/{ids['target_id']}",
        f"/v1/webhook-messages/{ids['message_id']}",
    ):
        assert client.get(path, headers=owner.headers).status_code == 200
    assert client.get(f"/v1/jobs/{ids['job_id']}", headers=owner.headers).json()["state"] == (
        "queued"
    )


def test_listings_show_only_the_callers_objects(
    client: TestClient,
    make_tenant: Callable[..., TenantFixture],
    owner_objects: tuple[TenantFixture, dict[str, str]],
) -> None:
    _, ids = owner_objects
    intruder = make_tenant("intruder")
    for path in ("/v1/jobs", "/v1/keys", "/v1/webhooks", "/v1/webhook-messages"):
        listed = client.get(path, headers=intruder.headers).json()["data"]
        assert not {item["id"] for item in listed} & set(ids.values()), path


def test_quotas_show_only_the_callers_own_limits_and_use(
    client: TestClient,
    admin_headers: dict[str, str],
    make_tenant: Callable[..., TenantFixture],
    owner_objects: tuple[TenantFixture, dict[str, str]],
) -> None:
    owner, _ = owner_objects
    intruder = make_tenant("intruder")
    client.put(
        f"/v1/admin/tenants/{owner.id}/quotas", json={"jobs_per_month": 9}, headers=admin_headers
    )
    mine = client.get("/v1/quotas", headers=intruder.headers).json()
    theirs = client.get("/v1/quotas", headers=owner.headers).json()
    assert theirs["usage"]["jobs_this_month"] == {
        **theirs["usage"]["jobs_this_month"],
        "limit": 9,
        "used": 1,
    }
    assert theirs["usage"]["webhook_targets"]["used"] == 1
    assert mine["limits"]["jobs_per_month"] != 9
    assert mine["usage"]["jobs_this_month"]["used"] == 0
    assert mine["usage"]["webhook_targets"]["used"] == 0
    # Usage records need the usage:read scope (and then show only the caller's own:
    # tests/platform/test_usage_api.py); these keys lack it.
    for path in ("/v1/usage/records", "/v1/usage/summary"):
        refused = client.get(path, headers=owner.headers)
        assert refused.status_code == 403
        assert refused.json()["missing_scopes"] == ["usage:read"]


def test_admin_routes_do_not_cross_tenants(
    client: TestClient,
    admin_headers: dict[str, str],
    make_tenant: Callable[..., TenantFixture],
    owner_objects: tuple[TenantFixture, dict[str, str]],
) -> None:
    _, ids = owner_objects
    other = make_tenant("other")
    for method, suffix in [("GET", ""), ("POST", "/revoke"), ("POST", "/roll")]:
        path = f"/v1/admin/tenants/{other.id}/keys/{ids['key_id']}{suffix}"
        answer = client.request(method, path, headers=admin_headers)
        assert answer.status_code == 404, (method, suffix)
