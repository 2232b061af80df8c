"""Webhook targets: SSRF-checked URLs, event filters, secrets shown once and stored
encrypted, rotation with a grace, enable/disable, the per-tenant limit, tenant isolation.

No test resolves a real host name: the destination resolver is replaced by a table.
"""

from __future__ import annotations

import base64
import socket
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from ipaddress import ip_address
from typing import Any

import pytest
from conftest import TenantFixture
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import select, update

from celeriac.platform.crypto.errors import DecryptionFailed
from celeriac.platform.db import get_engine, get_sessionmaker
from celeriac.platform.models import (
    AttemptTrigger,
    WebhookAttempt,
    WebhookDelivery,
    WebhookMessage,
    WebhookTarget,
)
from celeriac.platform.settings import Settings, WebhookSettings, get_settings
from celeriac.platform.webhooks import service
from celeriac.platform.webhooks.destinations import IPAddress
from celeriac.platform.webhooks.routes import destination_resolver

PUBLIC_ADDRESS = "93.184.215.14"
DNS: dict[str, list[IPAddress]] = {
    "hooks.example.com": [ip_address(PUBLIC_ADDRESS)],
    "other.example.com": [ip_address("93.184.215.15")],
    "internal.example.com": [ip_address("10.0.0.5")],
    # One bad address among good ones is enough to refuse.
    "mixed.example.com": [ip_address(PUBLIC_ADDRESS), ip_address("169.254.169.254")],
}
HOOK = "https://hooks.example.com/celeriac"
PROBLEM = "application/problem+json"


class FakeResolver:
    """Answers from :data:`DNS`; any other name does not resolve."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    def __call__(self, host: str, port: int) -> list[IPAddress]:
        self.asked.append(host)
        if host not in DNS:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return list(DNS[host])


def _app(client: TestClient) -> FastAPI:
    assert isinstance(client.app, FastAPI)
    return client.app


@pytest.fixture(autouse=True)
def resolver(client: TestClient) -> Iterator[FakeResolver]:
    fake = FakeResolver()
    _app(client).dependency_overrides[destination_resolver] = lambda: fake
    yield fake
    _app(client).dependency_overrides.pop(destination_resolver, None)


@pytest.fixture
def tenant(make_tenant: Callable[..., TenantFixture]) -> TenantFixture:
    return make_tenant()


def _create(client: TestClient, tenant: TenantFixture, **fields: Any) -> dict[str, Any]:
    body = {"url": HOOK, "event_types": ["job.*"], **fields}
    answer = client.post("/v1/webhooks", json=body, headers=tenant.headers)
    assert answer.status_code == 201, answer.text
    created: dict[str, Any] = answer.json()
    return created


def _raw(secret: str) -> bytes:
    assert secret.startswith("whsec_")
    return base64.b64decode(secret.removeprefix("whsec_"), validate=True)


def _signing_secrets(target_id: str, now: datetime | None = None) -> list[bytes]:
    with get_sessionmaker()() as session:
        target = session.get(WebhookTarget, uuid.UUID(target_id))
        assert target is not None
        return service.signing_secrets(target, now=now)


def _stored(target_id: str) -> WebhookTarget:
    with get_sessionmaker()() as session:
        target = session.get(WebhookTarget, uuid.UUID(target_id))
        assert target is not None
        return target


# --- creation and secrets --------------------------------------------------------------


def test_create_shows_the_secret_once_and_stores_it_only_encrypted(
    client: TestClient, tenant: TenantFixture
) -> None:
    answer = client.post(
        "/v1/webhooks",
        json={
            "url": HOOK,
            "event_types": ["job.succeeded", "job.failed"],
            "description": "billing",
            "max_deliveries_per_second": 5,
        },
        headers=tenant.headers,
    )
    assert answer.status_code == 201, answer.text
    assert answer.headers["Cache-Control"] == "no-store"
    created = answer.json()
    assert answer.headers["Location"] == f"/v1/webhooks/{created['id']}"
    assert created["tenant_id"] == tenant.id
    assert created["url"] == HOOK
    assert created["event_types"] == ["job.succeeded", "job.failed"]
    assert (created["state"], created["description"]) == ("enabled", "billing")
    assert created["max_deliveries_per_second"] == 5
    raw = _raw(created["secret"])
    assert len(raw) == 32

    assert _signing_secrets(created["id"]) == [raw]
    stored = _stored(created["id"])
    assert raw not in stored.secret_ciphertext
    assert created["secret"].encode() not in stored.secret_ciphertext
    assert stored.previous_secret_ciphertext is None

    fetched = client.get(answer.headers["Location"], headers=tenant.headers)
    assert fetched.status_code == 200
    assert "Cache-Control" not in fetched.headers
    listed = client.get("/v1/webhooks", headers=tenant.headers).json()["data"]
    patched = client.patch(
        answer.headers["Location"], json={"description": "x"}, headers=tenant.headers
    ).json()
    for shown in (fetched.json(), *listed, patched):
        assert not {"secret", "secret_ciphertext", "previous_secret_ciphertext"} & shown.keys()
    assert fetched.json() == {k: v for k, v in created.items() if k != "secret"}


def test_each_target_gets_its_own_secret(client: TestClient, tenant: TenantFixture) -> None:
    first, second = _create(client, tenant), _create(client, tenant)
    assert first["secret"] != second["secret"]
    # The secret is bound to its target: a ciphertext copied to another row does not open.
    with get_engine().begin() as conn:
        conn.execute(
            update(WebhookTarget)
            .where(WebhookTarget.id == uuid.UUID(second["id"]))
            .values(secret_ciphertext=_stored(first["id"]).secret_ciphertext)
        )
    with pytest.raises(DecryptionFailed, match="encryption context"):
        _signing_secrets(second["id"])


def test_rotation_keeps_the_previous_secret_for_the_grace(
    client: TestClient, tenant: TenantFixture
) -> None:
    created = _create(client, tenant)
    base = f"/v1/webhooks/{created['id']}"
    before = _stored(created["id"]).secret_ciphertext

    rotated = client.post(f"{base}/rotate-secret", headers=tenant.headers)
    assert rotated.status_code == 200, rotated.text
    assert rotated.headers["Cache-Control"] == "no-store"
    new = rotated.json()
    assert new["secret"] != created["secret"]
    assert new["id"] == created["id"]
    assert _signing_secrets(created["id"]) == [_raw(new["secret"]), _raw(created["secret"])]
    assert _stored(created["id"]).previous_secret_ciphertext == before
    expires = datetime.fromisoformat(new["previous_secret_expires_at"])
    assert timedelta(hours=23, minutes=59) < expires - datetime.now(UTC) <= timedelta(hours=24)
    # After the grace only the new secret signs.
    later = expires + timedelta(seconds=1)
    assert _signing_secrets(created["id"], now=later) == [_raw(new["secret"])]

    hour = client.post(
        f"{base}/rotate-secret",
        json={"previous_secret_expires_in_seconds": 3600},
        headers=tenant.headers,
    ).json()
    assert _signing_secrets(created["id"]) == [_raw(hour["secret"]), _raw(new["secret"])]
    expires = datetime.fromisoformat(hour["previous_secret_expires_at"])
    assert timedelta(minutes=59) < expires - datetime.now(UTC) <= timedelta(hours=1)

    now = client.post(
        f"{base}/rotate-secret",
        json={"previous_secret_expires_in_seconds": 0},
        headers=tenant.headers,
    ).json()
    assert now["previous_secret_expires_at"] is None
    assert _signing_secrets(created["id"]) == [_raw(now["secret"])]
    assert "secret" not in client.get(base, headers=tenant.headers).json()


@pytest.mark.parametrize("seconds", [-1, 7 * 24 * 3600 + 1, "soon"])
def test_rotation_grace_is_bounded(
    client: TestClient, tenant: TenantFixture, seconds: object
) -> None:
    created = _create(client, tenant)
    answer = client.post(
        f"/v1/webhooks/{created['id']}/rotate-secret",
        json={"previous_secret_expires_in_seconds": seconds},
        headers=tenant.headers,
    )
    assert answer.status_code == 422
    assert answer.headers["content-type"] == PROBLEM
    assert answer.json()["errors"][0]["pointer"] == "#/body/previous_secret_expires_in_seconds"
    assert _signing_secrets(created["id"]) == [_raw(created["secret"])]


# --- event types -----------------------------------------------------------------------


def test_every_known_type_and_wildcard_is_accepted(
    client: TestClient, tenant: TenantFixture
) -> None:
    filters = [str(f) for f in service.EventTypeFilter]
    assert set(filters) >= {str(t) for t in service.EventType} | {"job.*", "webhook.*", "*"}
    assert _create(client, tenant, event_types=filters)["event_types"] == filters


@pytest.mark.parametrize(
    ("event_types", "pointer"),
    [
        (["job.succeeded", "job.exploded"], "#/body/event_types/1"),
        (["job.*", "job"], "#/body/event_types/1"),
        (["jobs.*"], "#/body/event_types/0"),
        (["job.failed", "job.*", "job.failed"], "#/body/event_types"),
        ([], "#/body/event_types"),
        ("job.*", "#/body/event_types"),
    ],
)
def test_bad_event_types_are_422_with_a_pointer(
    client: TestClient, tenant: TenantFixture, event_types: object, pointer: str
) -> None:
    answer = client.post(
        "/v1/webhooks", json={"url": HOOK, "event_types": event_types}, headers=tenant.headers
    )
    assert answer.status_code == 422
    assert answer.headers["content-type"] == PROBLEM
    assert [e["pointer"] for e in answer.json()["errors"]] == [pointer]


def test_event_type_matching() -> None:
    match = service.event_type_matches
    assert match(["*"], "webhook.test")
    assert match(["job.*"], "job.partial")
    assert not match(["job.*"], "webhook.disabled")
    assert match(["job.failed", "webhook.*"], "webhook.test")
    assert not match(["job.failed"], "job.succeeded")
    assert not match(["job.*"], "jobx.failed")


# --- destination checks ----------------------------------------------------------------


def test_the_url_is_normalised_as_it_will_be_called(
    client: TestClient, tenant: TenantFixture
) -> None:
    created = _create(client, tenant, url="https://Hooks.Example.com:443/in?x=1#fragment")
    assert created["url"] == "https://hooks.example.com/in?x=1"


def test_allowlisted_loopback_is_accepted_over_http_in_the_test_settings(
    client: TestClient, tenant: TenantFixture, resolver: FakeResolver
) -> None:
    # tests/conftest.py: allow_http and allowed_cidrs 127.0.0.0/8, ::1/128.
    assert _create(client, tenant, url="http://127.0.0.1:9/hook")["url"] == (
        "http://127.0.0.1:9/hook"
    )
    assert _create(client, tenant, url="http://[::1]:9/")["url"] == "http://[::1]:9/"
    assert resolver.asked == []  # literals are never resolved


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://10.0.0.5/hook", "a private address"),
        ("https://internal.example.com/hook", "resolves to 10.0.0.5, a private address"),
        ("https://mixed.example.com/", "169.254.169.254, a cloud metadata address"),
        ("http://169.254.169.254/latest/meta-data/", "a cloud metadata address"),
        ("http://[::ffff:10.0.0.1]/", "an IPv4-mapped address embedding 10.0.0.1"),
        ("http://192.168.1.1/", "a private address"),
        ("http://0.0.0.0:9/", "an unspecified address"),
        ("http://2130706433/", "non-standard form"),
        ("https://user:pw@hooks.example.com/", "user name or password"),
        ("ftp://hooks.example.com/", "must use http or https"),
        ("https://nowhere.example.com/", "cannot resolve host nowhere.example.com"),
    ],
)
def test_unsafe_destinations_are_422_on_the_url(
    client: TestClient, tenant: TenantFixture, url: str, reason: str
) -> None:
    answer = client.post(
        "/v1/webhooks", json={"url": url, "event_types": ["*"]}, headers=tenant.headers
    )
    assert answer.status_code == 422
    assert answer.headers["content-type"] == PROBLEM
    body = answer.json()
    assert reason in body["detail"]
    assert body["errors"] == [{"pointer": "#/body/url", "detail": body["detail"]}]
    assert client.get("/v1/webhooks", headers=tenant.headers).json()["data"] == []


def test_https_is_required_unless_http_is_allowed(
    client: TestClient, tenant: TenantFixture, api_settings: Settings
) -> None:
    strict = api_settings.model_copy(
        update={"webhooks": WebhookSettings(allow_http=False, allowed_cidrs=[])}
    )
    _app(client).dependency_overrides[get_settings] = lambda: strict
    try:
        plain = client.post(
            "/v1/webhooks",
            json={"url": "http://hooks.example.com/", "event_types": ["*"]},
            headers=tenant.headers,
        )
        loopback = client.post(
            "/v1/webhooks",
            json={"url": "https://127.0.0.1:9/", "event_types": ["*"]},
            headers=tenant.headers,
        )
        secure = client.post(
            "/v1/webhooks", json={"url": HOOK, "event_types": ["*"]}, headers=tenant.headers
        )
    finally:
        _app(client).dependency_overrides.pop(get_settings, None)
    assert plain.status_code == 422
    assert "must use https" in plain.json()["detail"]
    assert plain.json()["errors"][0]["pointer"] == "#/body/url"
    assert loopback.status_code == 422
    assert "a loopback address" in loopback.json()["detail"]
    assert secure.status_code == 201


# --- update, disable, enable, delete -----------------------------------------------------


def test_patch_changes_only_what_is_sent_and_rechecks_the_url(
    client: TestClient, tenant: TenantFixture
) -> None:
    created = _create(client, tenant, description="old", max_deliveries_per_second=2)
    base = f"/v1/webhooks/{created['id']}"

    def patch(body: dict[str, Any]) -> Any:
        return client.patch(base, json=body, headers=tenant.headers)

    unchanged = patch({}).json()
    assert unchanged["updated_at"] == created["updated_at"]
    changed = patch(
        {"url": "https://other.example.com/v2", "event_types": ["webhook.*"], "description": "new"}
    )
    assert changed.status_code == 200, changed.text
    body = changed.json()
    assert (body["url"], body["event_types"]) == ("https://other.example.com/v2", ["webhook.*"])
    assert (body["description"], body["max_deliveries_per_second"]) == ("new", 2)
    assert body["updated_at"] > created["updated_at"]

    unsafe = patch({"url": "https://internal.example.com/", "description": "sneaky"})
    assert unsafe.status_code == 422
    assert unsafe.json()["errors"][0]["pointer"] == "#/body/url"
    bad_type = patch({"event_types": ["job.*", "job.nope"]})
    assert bad_type.json()["errors"][0]["pointer"] == "#/body/event_types/1"
    for field in ("url", "event_types"):  # a null description clears it (test_bad_input)
        nulled = patch({field: None})
        assert nulled.status_code == 422
        assert nulled.json()["errors"][0]["pointer"] == (f"#/body/{field}")
    assert patch({"secret": "whsec_mine"}).status_code == 422
    assert patch({"max_deliveries_per_second": 0}).status_code == 422
    assert client.get(base, headers=tenant.headers).json() == body

    unlimited = patch({"max_deliveries_per_second": None}).json()
    assert unlimited["max_deliveries_per_second"] is None
    assert _signing_secrets(created["id"]) == [_raw(created["secret"])]


def test_disable_and_enable(client: TestClient, tenant: TenantFixture) -> None:
    created = _create(client, tenant)
    base = f"/v1/webhooks/{created['id']}"
    disabled = client.post(f"{base}/disable", headers=tenant.headers).json()
    assert disabled["state"] == "disabled"
    assert disabled["disabled_reason"]
    again = client.post(f"{base}/disable", headers=tenant.headers).json()
    assert again == disabled

    # As delivery would leave it after a run of failures.
    failing_since = datetime.now(UTC) - timedelta(days=3)
    with get_engine().begin() as conn:
        conn.execute(
            update(WebhookTarget)
            .where(WebhookTarget.id == uuid.UUID(created["id"]))
            .values(disabled_reason="failing for 3 days", failing_since=failing_since)
        )
    enabled = client.post(f"{base}/enable", headers=tenant.headers).json()
    assert enabled["state"] == "enabled"
    assert (enabled["disabled_reason"], enabled["failing_since"]) == (None, None)

    # Enabling an enabled target does not reset its run of failures.
    with get_engine().begin() as conn:
        conn.execute(
            update(WebhookTarget)
            .where(WebhookTarget.id == uuid.UUID(created["id"]))
            .values(failing_since=failing_since)
        )
    still = client.post(f"{base}/enable", headers=tenant.headers).json()
    assert datetime.fromisoformat(still["failing_since"]) == failing_since


def test_delete_removes_the_target_and_its_delivery_history(
    client: TestClient, tenant: TenantFixture
) -> None:
    created, kept = _create(client, tenant), _create(client, tenant)
    target_id, tenant_id = uuid.UUID(created["id"]), uuid.UUID(tenant.id)
    with get_sessionmaker().begin() as session:
        session.add(
            WebhookMessage(
                id="msg_1",
                tenant_id=tenant_id,
                event_type="job.failed",
                event_key="job:1:finished",
                payload={},
            )
        )
        session.flush()
        delivery = WebhookDelivery(tenant_id=tenant_id, message_id="msg_1", target_id=target_id)
        session.add(delivery)
        session.flush()
        session.add(
            WebhookAttempt(
                tenant_id=tenant_id,
                delivery_id=delivery.id,
                target_id=target_id,
                trigger=AttemptTrigger.SCHEDULED,
                status_code=500,
            )
        )

    answer = client.delete(f"/v1/webhooks/{created['id']}", headers=tenant.headers)
    assert answer.status_code == 204
    assert answer.content == b""
    assert client.get(f"/v1/webhooks/{created['id']}", headers=tenant.headers).status_code == 404
    gone = client.delete(f"/v1/webhooks/{created['id']}", headers=tenant.headers)
    assert gone.status_code == 404
    assert gone.headers["content-type"] == PROBLEM
    with get_engine().connect() as conn:
        assert conn.execute(select(WebhookDelivery.id)).all() == []
        assert conn.execute(select(WebhookAttempt.id)).all() == []
    listed = client.get("/v1/webhooks", headers=tenant.headers).json()["data"]
    assert [t["id"] for t in listed] == [kept["id"]]


# --- limits, pages, isolation, scopes ----------------------------------------------------


def test_the_number_of_targets_is_the_tenants_quota(
    client: TestClient, make_tenant: Callable[..., TenantFixture], admin_headers: dict[str, str]
) -> None:
    tenant, other = make_tenant(), make_tenant()
    quotas = f"/v1/admin/tenants/{tenant.id}/quotas"
    assert client.get(quotas, headers=admin_headers).json()["limits"]["max_webhook_targets"] == 20
    assert client.put(quotas, json={"max_webhook_targets": 3}, headers=admin_headers).is_success
    ids = [_create(client, tenant)["id"] for _ in range(3)]
    over = client.post(
        "/v1/webhooks", json={"url": HOOK, "event_types": ["*"]}, headers=tenant.headers
    )
    assert over.status_code == 409
    assert over.headers["content-type"] == PROBLEM
    assert "at most 3 webhook targets" in over.json()["detail"]
    assert over.json()["limit"] == 3
    assert over.json()["policy"] == "webhook-targets"
    _create(client, other)  # the limit is per tenant

    client.delete(f"/v1/webhooks/{ids[0]}", headers=tenant.headers)
    _create(client, tenant)
    assert client.put(quotas, json={"max_webhook_targets": 4}, headers=admin_headers).is_success
    _create(client, tenant)  # a raised quota applies to the next request


def test_list_pages_through_every_target_once(client: TestClient, tenant: TenantFixture) -> None:
    made = [_create(client, tenant)["id"] for _ in range(5)]
    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, str | int] = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = client.get("/v1/webhooks", params=params, headers=tenant.headers).json()
        seen += [t["id"] for t in page["data"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == list(reversed(made))
    bad = client.get("/v1/webhooks", params={"cursor": "nonsense"}, headers=tenant.headers)
    assert bad.status_code == 400
    assert bad.headers["content-type"] == PROBLEM
    assert client.get("/v1/webhooks", params={"limit": 0}, headers=tenant.headers).status_code == (
        422
    )


def test_another_tenants_target_is_404(
    client: TestClient, make_tenant: Callable[..., TenantFixture]
) -> None:
    owner, stranger = make_tenant(), make_tenant()
    created = _create(client, owner)
    base = f"/v1/webhooks/{created['id']}"
    for method, path, body in [
        ("GET", base, None),
        ("PATCH", base, {"description": "mine now"}),
        ("DELETE", base, None),
        ("POST", f"{base}/disable", None),
        ("POST", f"{base}/enable", None),
        ("POST", f"{base}/rotate-secret", None),
        ("GET", f"/v1/webhooks/{uuid.uuid4()}", None),
    ]:
        answer = client.request(method, path, json=body, headers=stranger.headers)
        assert answer.status_code == 404, (method, path, answer.text)
        assert answer.headers["content-type"] == PROBLEM
    assert client.get("/v1/webhooks", headers=stranger.headers).json()["data"] == []
    untouched = client.get(base, headers=owner.headers).json()
    assert untouched == {k: v for k, v in created.items() if k != "secret"}
    assert _signing_secrets(created["id"]) == [_raw(created["secret"])]


def test_the_webhooks_scope_is_required(
    client: TestClient, make_tenant: Callable[..., TenantFixture]
) -> None:
    owner = make_tenant()
    created = _create(client, owner)
    reader = make_tenant(scopes=["jobs:read", "jobs:write", "keys:manage"])
    for method, path in [
        ("GET", "/v1/webhooks"),
        ("POST", "/v1/webhooks"),
        ("GET", f"/v1/webhooks/{created['id']}"),
        ("POST", f"/v1/webhooks/{created['id']}/rotate-secret"),
    ]:
        answer = client.request(
            method, path, json={"url": HOOK, "event_types": ["*"]}, headers=reader.headers
        )
        assert answer.status_code == 403
        assert answer.headers["content-type"] == PROBLEM
        assert answer.json()["missing_scopes"] == ["webhooks:manage"]
        assert "webhooks:manage" in answer.json()["detail"]
    assert client.get("/v1/webhooks").status_code == 401


def test_openapi_documents_the_routes_and_hides_secrets(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    paths = schema["paths"]
    assert set(paths["/v1/webhooks"]) == {"get", "post"}
    assert set(paths["/v1/webhooks/{target_id}"]) == {"get", "patch", "delete"}
    for action in ("disable", "enable", "rotate-secret"):
        operation = paths[f"/v1/webhooks/{{target_id}}/{action}"]["post"]
        assert operation["tags"] == ["webhooks"]
        assert operation["description"]
    components = schema["components"]["schemas"]
    assert "secret" not in components["WebhookTargetOut"]["properties"]
    assert "secret" in components["WebhookTargetWithSecret"]["properties"]
    assert "409" in paths["/v1/webhooks"]["post"]["responses"]
