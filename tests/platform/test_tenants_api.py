"""Admin tenant routes: create, list with cursors, update, suspend, soft delete."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from conftest import TenantFixture
from fastapi.testclient import TestClient
from sqlalchemy import select

from celeriac.platform.auth.jwt import Role, mint_token
from celeriac.platform.db import get_engine
from celeriac.platform.models import AuditEntry


def test_create_get_and_audit(client: TestClient, admin_headers: dict[str, str]) -> None:
    created = client.post(
        "/v1/admin/tenants",
        json={"slug": "acme", "name": "Acme", "plan": "pro"},
        headers=admin_headers,
    )
    assert created.status_code == 201
    body = created.json()
    assert (body["slug"], body["status"], body["plan"]) == ("acme", "active", "pro")
    assert created.headers["Location"] == f"/v1/admin/tenants/{body['id']}"
    assert client.get(created.headers["Location"], headers=admin_headers).json() == body
    with get_engine().connect() as conn:
        actions = conn.execute(select(AuditEntry.action, AuditEntry.actor)).all()
    assert ("tenant.create", "ops@test") in [tuple(a) for a in actions]


@pytest.mark.parametrize(
    "slug", ["ab", "Acme", "acme_corp", "acme corp", "-acme", "acme-", "a" * 41, "ünï"]
)
def test_bad_slugs_are_422_with_a_pointer(
    client: TestClient, admin_headers: dict[str, str], slug: str
) -> None:
    answer = client.post(
        "/v1/admin/tenants", json={"slug": slug, "name": "x"}, headers=admin_headers
    )
    assert answer.status_code == 422
    assert answer.headers["content-type"] == "application/problem+json"
    assert answer.json()["errors"][0]["pointer"] == "#/body/slug"


def test_duplicate_slug_is_409(client: TestClient, admin_headers: dict[str, str]) -> None:
    body = {"slug": "dupe", "name": "x"}
    assert client.post("/v1/admin/tenants", json=body, headers=admin_headers).status_code == 201
    again = client.post("/v1/admin/tenants", json=body, headers=admin_headers)
    assert again.status_code == 409
    assert "already exists" in again.json()["detail"]


def test_list_pages_through_every_tenant_once(
    client: TestClient, admin_headers: dict[str, str]
) -> None:
    for i in range(7):
        client.post(
            "/v1/admin/tenants", json={"slug": f"page-{i}", "name": "x"}, headers=admin_headers
        )
    seen: list[str] = []
    cursor = None
    while True:
        params = {"limit": 3} | ({"cursor": cursor} if cursor else {})
        page = client.get("/v1/admin/tenants", params=params, headers=admin_headers).json()
        seen += [t["slug"] for t in page["data"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert sorted(seen) == [f"page-{i}" for i in range(7)]
    assert seen == [f"page-{i}" for i in reversed(range(7))]  # newest first
    bad = client.get("/v1/admin/tenants", params={"cursor": "garbage"}, headers=admin_headers)
    assert bad.status_code == 400


def test_suspend_refuses_writes_with_403_and_delete_revokes_keys(
    client: TestClient,
    admin_headers: dict[str, str],
    make_tenant: Callable[..., TenantFixture],
) -> None:
    tenant = make_tenant()
    assert client.get("/v1/keys", headers=tenant.headers).status_code == 200

    suspended = client.patch(
        f"/v1/admin/tenants/{tenant.id}", json={"status": "suspended"}, headers=admin_headers
    )
    assert suspended.json()["status"] == "suspended"
    answer = client.post("/v1/keys", headers=tenant.headers, json={"name": "more"})
    assert answer.status_code == 403
    assert answer.json()["code"] == "tenant-suspended"
    assert "suspended" in answer.json()["detail"]
    # Reads stay open (docs/adr/0015): the tenant can see why its work is held.
    assert client.get("/v1/keys", headers=tenant.headers).status_code == 200

    client.patch(f"/v1/admin/tenants/{tenant.id}", json={"status": "active"}, headers=admin_headers)
    assert client.get("/v1/keys", headers=tenant.headers).status_code == 200

    deleted = client.delete(f"/v1/admin/tenants/{tenant.id}", headers=admin_headers)
    assert deleted.json()["status"] == "deleted"
    assert deleted.json()["deleted_at"]
    answer = client.get("/v1/keys", headers=tenant.headers)
    assert answer.status_code == 401
    assert "WWW-Authenticate" in answer.headers
    keys = client.get(f"/v1/admin/tenants/{tenant.id}/keys", headers=admin_headers)
    assert keys.status_code == 404  # a deleted tenant's keys are not managed any more
    patch = client.patch(
        f"/v1/admin/tenants/{tenant.id}", json={"plan": "pro"}, headers=admin_headers
    )
    assert patch.status_code == 409


def test_billing_role_cannot_manage_tenants(client: TestClient, api_settings: object) -> None:
    token = mint_token(api_settings, "billing@test", Role.BILLING)  # type: ignore[arg-type]
    answer = client.get("/v1/admin/tenants", headers={"Authorization": f"Bearer {token}"})
    assert answer.status_code == 403


def test_tenant_key_is_not_an_admin_token(
    client: TestClient, make_tenant: Callable[..., TenantFixture]
) -> None:
    answer = client.get("/v1/admin/tenants", headers=make_tenant().headers)
    assert answer.status_code == 401
