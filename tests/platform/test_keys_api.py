"""API keys: shown once, stored hashed, scoped, expiring, revocable, rollable."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from conftest import TenantFixture
from fastapi.testclient import TestClient
from sqlalchemy import select

from celeriac.platform.db import get_engine
from celeriac.platform.keys.tokens import KeyEnvironment, generate_key
from celeriac.platform.models import ApiKey


def test_key_is_shown_once_and_stored_only_as_a_digest(
    client: TestClient, make_tenant: Callable[..., TenantFixture]
) -> None:
    tenant = make_tenant()
    created = client.post(
        "/v1/keys", json={"name": "ci", "scopes": ["jobs:read"]}, headers=tenant.headers
    )
    assert created.status_code == 201
    assert created.headers["Cache-Control"] == "no-store"
    key = created.json()["key"]
    assert key.startswith(created.json()["prefix"] + "_")

    listed = client.get("/v1/keys", headers=tenant.headers).json()["data"]
    assert all("key" not in item for item in listed)
    assert {item["last_four"] for item in listed} >= {key[-4:]}
    with get_engine().connect() as conn:
        stored = [tuple(r) for r in conn.execute(select(ApiKey.prefix, ApiKey.digest))]
    assert all(key not in value for row in stored for value in row)


def test_scopes_are_enforced_and_named(
    client: TestClient, make_tenant: Callable[..., TenantFixture]
) -> None:
    reader = make_tenant(scopes=["jobs:read"])
    answer = client.get("/v1/keys", headers=reader.headers)
    assert answer.status_code == 403
    assert answer.json()["missing_scopes"] == ["keys:manage"]
    assert "keys:manage" in answer.json()["detail"]


def test_a_key_cannot_grant_scopes_it_lacks(
    client: TestClient, make_tenant: Callable[..., TenantFixture]
) -> None:
    manager = make_tenant(scopes=["keys:manage", "jobs:read"])
    answer = client.post("/v1/keys", json={"scopes": ["jobs:write"]}, headers=manager.headers)
    assert answer.status_code == 403
    assert "jobs:write" in answer.json()["detail"]


def test_missing_malformed_unknown_expired_and_revoked_keys_are_401(
    client: TestClient, make_tenant: Callable[..., TenantFixture]
) -> None:
    tenant = make_tenant()
    unknown, _ = generate_key(KeyEnvironment.LIVE)
    soon = (datetime.now(UTC) + timedelta(seconds=1)).isoformat()
    expiring = client.post(
        "/v1/keys", json={"scopes": ["keys:manage"], "expires_at": soon}, headers=tenant.headers
    ).json()
    revoked = client.post(
        "/v1/keys", json={"scopes": ["keys:manage"]}, headers=tenant.headers
    ).json()
    assert client.post(f"/v1/keys/{revoked['id']}/revoke", headers=tenant.headers).json()[
        "revoked_at"
    ]

    with get_engine().begin() as conn:  # move the expiry into the past without waiting
        conn.execute(
            ApiKey.__table__.update()
            .where(ApiKey.id == expiring["id"])
            .values(expires_at=datetime.now(UTC) - timedelta(seconds=1))
        )
    client.post(f"/v1/keys/{revoked['id']}/revoke", headers=tenant.headers)  # drops caches

    for headers, reason in [
        ({}, "bearer token"),
        ({"Authorization": "Bearer ck_live_nope"}, "malformed"),
        ({"Authorization": f"Bearer {unknown}"}, "not valid"),
        ({"Authorization": f"Bearer {expiring['key']}"}, "expired"),
        ({"Authorization": f"Bearer {revoked['key']}"}, "revoked"),
    ]:
        answer = client.get("/v1/keys", headers=headers)
        assert answer.status_code == 401, reason
        assert answer.headers["WWW-Authenticate"].startswith("Bearer")
        assert reason in answer.json()["detail"]


def test_roll_returns_a_new_key_and_keeps_the_old_one_for_the_grace(
    client: TestClient, make_tenant: Callable[..., TenantFixture]
) -> None:
    tenant = make_tenant()
    old = client.post(
        "/v1/keys", json={"name": "svc", "scopes": ["keys:manage"]}, headers=tenant.headers
    ).json()
    rolled = client.post(
        f"/v1/keys/{old['id']}/roll",
        json={"old_key_expires_in_seconds": 3600},
        headers=tenant.headers,
    )
    assert rolled.status_code == 201
    new = rolled.json()
    assert new["key"] != old["key"]
    assert new["name"] == "svc"
    assert new["scopes"] == ["keys:manage"]
    for key in (old["key"], new["key"]):
        assert client.get("/v1/keys", headers={"Authorization": f"Bearer {key}"}).status_code == 200
    old_now = client.get(f"/v1/keys/{old['id']}", headers=tenant.headers).json()
    assert old_now["replaced_by_id"] == new["id"]
    expires = datetime.fromisoformat(old_now["expires_at"])
    assert timedelta(minutes=59) < expires - datetime.now(UTC) <= timedelta(hours=1)

    immediate = client.post(
        f"/v1/keys/{new['id']}/roll",
        json={"old_key_expires_in_seconds": 0},
        headers=tenant.headers,
    )
    assert immediate.status_code == 201
    gone = client.get("/v1/keys", headers={"Authorization": f"Bearer {new['key']}"})
    assert gone.status_code == 401


def test_admin_manages_any_tenants_keys(
    client: TestClient, admin_headers: dict[str, str], make_tenant: Callable[..., TenantFixture]
) -> None:
    tenant = make_tenant()
    base = f"/v1/admin/tenants/{tenant.id}/keys"
    listed = client.get(base, headers=admin_headers).json()["data"]
    (only,) = listed
    revoked = client.post(f"{base}/{only['id']}/revoke", headers=admin_headers)
    assert revoked.status_code == 200
    assert client.get("/v1/keys", headers=tenant.headers).status_code == 401
    missing = client.get(
        "/v1/admin/tenants/00000000-0000-0000-0000-000000000000/keys", headers=admin_headers
    )
    assert missing.status_code == 404


def test_past_expiry_is_refused(
    client: TestClient, make_tenant: Callable[..., TenantFixture]
) -> None:
    tenant = make_tenant()
    past = (datetime.now(UTC) - timedelta(days=1)).isoformat()
    answer = client.post(
        "/v1/keys", json={"scopes": ["jobs:read"], "expires_at": past}, headers=tenant.headers
    )
    assert answer.status_code == 422
    assert answer.json()["errors"][0]["pointer"] == "#/body/expires_at"
