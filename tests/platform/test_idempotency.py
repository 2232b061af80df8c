"""Idempotency-Key: replays, body mismatch, in-flight conflicts, nothing stored on errors."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

from conftest import TenantFixture
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from celeriac.platform.db import get_engine, get_sessionmaker
from celeriac.platform.models import IdempotencyKey, IdempotencyState, Tenant, utcnow


def _count(model: type) -> int:
    with get_engine().connect() as conn:
        return int(conn.execute(select(func.count()).select_from(model)).scalar_one())


def test_same_key_and_body_replays_the_first_answer(
    client: TestClient, admin_headers: dict[str, str]
) -> None:
    headers = admin_headers | {"Idempotency-Key": "create-acme-1"}
    body = {"slug": "acme", "name": "Acme"}
    first = client.post("/v1/admin/tenants", json=body, headers=headers)
    second = client.post("/v1/admin/tenants", json=body, headers=headers)
    assert first.status_code == second.status_code == 201
    assert second.json() == first.json()
    assert second.headers["Idempotent-Replayed"] == "true"
    assert second.headers["Location"] == first.headers["Location"]
    assert "Idempotent-Replayed" not in first.headers
    assert second.headers["X-Request-ID"] != first.headers["X-Request-ID"]
    assert _count(Tenant) == 1


def test_same_key_with_another_body_is_422(
    client: TestClient, admin_headers: dict[str, str]
) -> None:
    headers = admin_headers | {"Idempotency-Key": "k"}
    client.post("/v1/admin/tenants", json={"slug": "one", "name": "x"}, headers=headers)
    other = client.post("/v1/admin/tenants", json={"slug": "two", "name": "x"}, headers=headers)
    assert other.status_code == 422
    assert "different request body" in other.json()["detail"]
    assert _count(Tenant) == 1


def test_rejected_requests_are_not_stored(
    client: TestClient, admin_headers: dict[str, str]
) -> None:
    headers = admin_headers | {"Idempotency-Key": "retry-me"}
    bad = client.post("/v1/admin/tenants", json={"slug": "NO", "name": "x"}, headers=headers)
    assert bad.status_code == 422
    unauthenticated = client.post(
        "/v1/admin/tenants",
        json={"slug": "ok-slug", "name": "x"},
        headers={"Idempotency-Key": "retry-me", "Authorization": "Bearer nope"},
    )
    assert unauthenticated.status_code == 401
    assert _count(IdempotencyKey) == 0
    fixed = client.post("/v1/admin/tenants", json={"slug": "ok-slug", "name": "x"}, headers=headers)
    assert fixed.status_code == 201
    assert "Idempotent-Replayed" not in fixed.headers


def test_key_in_flight_is_409_with_retry_after(
    client: TestClient, make_tenant: Callable[..., TenantFixture]
) -> None:
    tenant = make_tenant()
    headers = tenant.headers | {"Idempotency-Key": "busy"}
    first = client.post("/v1/keys", json={"scopes": ["jobs:read"]}, headers=headers)
    assert first.status_code == 201
    # Put the key back in the state it has while its first request is being processed.
    with get_sessionmaker().begin() as session:
        row = session.scalars(select(IdempotencyKey).where(IdempotencyKey.key == "busy")).one()
        row.state = IdempotencyState.IN_FLIGHT
    again = client.post("/v1/keys", json={"scopes": ["jobs:read"]}, headers=headers)
    assert again.status_code == 409
    assert again.headers["Retry-After"] == "1"


def test_keys_are_per_tenant(client: TestClient, make_tenant: Callable[..., TenantFixture]) -> None:
    a, b = make_tenant(), make_tenant()
    body = {"scopes": ["jobs:read"]}
    first_a = client.post("/v1/keys", json=body, headers=a.headers | {"Idempotency-Key": "x"})
    first_b = client.post("/v1/keys", json=body, headers=b.headers | {"Idempotency-Key": "x"})
    assert first_a.status_code == first_b.status_code == 201
    assert first_a.json()["tenant_id"] != first_b.json()["tenant_id"]
    assert "Idempotent-Replayed" not in first_b.headers


def test_expired_keys_are_forgotten(client: TestClient, admin_headers: dict[str, str]) -> None:
    headers = admin_headers | {"Idempotency-Key": "old"}
    client.post("/v1/admin/tenants", json={"slug": "first", "name": "x"}, headers=headers)
    with get_sessionmaker().begin() as session:
        row = session.scalars(select(IdempotencyKey)).one()
        row.expires_at = utcnow() - timedelta(seconds=1)
    fresh = client.post("/v1/admin/tenants", json={"slug": "second", "name": "x"}, headers=headers)
    assert fresh.status_code == 201
    assert fresh.json()["slug"] == "second"


def test_stored_answers_never_hold_a_secret_in_clear(
    client: TestClient, admin_headers: dict[str, str], make_tenant: Callable[..., TenantFixture]
) -> None:
    tenant = make_tenant()
    headers = tenant.headers | {"Idempotency-Key": "new-key"}
    first = client.post("/v1/keys", json={"scopes": ["jobs:read"]}, headers=headers)
    replay = client.post("/v1/keys", json={"scopes": ["jobs:read"]}, headers=headers)
    assert replay.json()["key"] == first.json()["key"]
    assert replay.headers["Idempotent-Replayed"] == "true"
    assert "x-celeriac-stored" not in replay.headers

    admin = admin_headers | {"Idempotency-Key": "admin-key"}
    url = f"/v1/admin/tenants/{tenant.id}/keys"
    created = client.post(url, json={"scopes": ["jobs:read"]}, headers=admin)
    again = client.post(url, json={"scopes": ["jobs:read"]}, headers=admin)
    assert created.status_code == 201
    assert again.status_code == 409
    assert "shown only once" in again.json()["detail"]

    with get_engine().connect() as conn:
        bodies = [bytes(b or b"") for (b,) in conn.execute(select(IdempotencyKey.response_body))]
    for secret in (first.json()["key"], created.json()["key"]):
        assert all(secret.encode() not in body for body in bodies)
