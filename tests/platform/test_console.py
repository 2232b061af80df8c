"""The console's sessions and security, through HTTP (the browser flows are in
tests/browser): cookie flags, CSRF, headers, tenant scoping, sessions ending."""

from __future__ import annotations

import re
import time
from collections.abc import Callable

import pytest
from conftest import TenantFixture
from fastapi.testclient import TestClient

from celeriac.platform.auth.jwt import Role, mint_token
from celeriac.platform.console import sessions
from celeriac.platform.console.web import CONTENT_SECURITY_POLICY
from celeriac.platform.db import get_sessionmaker
from celeriac.platform.jobs.pipelines import ANALYZER, DATASET, PluginInfo, register_plugins
from celeriac.platform.settings import Settings


@pytest.fixture
def client(client: TestClient) -> TestClient:
    """The API over https (not loopback): the console's cookie is then Secure, as in
    production, and a client sends it only over https."""
    client.base_url = "https://testserver"
    return client


@pytest.fixture(autouse=True)
def _registry(api_settings: Settings) -> None:
    """What the compute pool publishes when it starts (no workers run in these tests)."""
    with get_sessionmaker().begin() as session:
        register_plugins(
            session,
            [
                PluginInfo(DATASET, "tabular", "1.0", {"type": "object"}, produces="table"),
                PluginInfo(ANALYZER, "summary", "1.0", {"type": "object"}, accepts=("table",)),
                PluginInfo(ANALYZER, "anomalies", "1.0", {"type": "object"}, accepts=("table",)),
            ],
        )


def sign_in(client: TestClient, credential: str) -> str:
    """Sign in; returns the page's CSRF token."""
    answer = client.post(
        "/console/sign-in",
        data={"credential": credential},
        headers={"Origin": "https://testserver"},
        follow_redirects=False,
    )
    assert answer.status_code == 303, answer.text
    page = client.get(answer.headers["location"])
    assert page.status_code == 200, page.text
    found = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert found is not None
    return found.group(1)


def test_sign_in_sets_a_strict_http_only_cookie_and_keeps_no_key(
    client: TestClient, make_tenant: Callable[..., TenantFixture]
) -> None:
    tenant = make_tenant()
    answer = client.post(
        "/console/sign-in", data={"credential": tenant.key}, follow_redirects=False
    )
    assert answer.status_code == 303
    assert answer.headers["location"] == "/console/jobs"
    cookie = answer.headers["set-cookie"]
    assert "HttpOnly" in cookie
    assert "SameSite=strict" in cookie
    # testserver is not loopback: the cookie is Secure and host-bound.
    assert "Secure" in cookie
    assert cookie.startswith("__Host-celeriac_console=")
    session_id = cookie.split(";", 1)[0].split("=", 1)[1]
    assert tenant.key not in cookie
    state = sessions.resolve(session_id)
    assert state is not None
    assert state.tenant_slug == tenant.slug
    assert tenant.key not in repr(state)


def test_a_bad_credential_is_refused_with_the_reason(client: TestClient) -> None:
    answer = client.post("/console/sign-in", data={"credential": "ck_live_nope"})
    assert answer.status_code == 401
    assert "Sign-in refused" in answer.text
    assert "set-cookie" not in answer.headers


def test_pages_carry_a_strict_csp_and_deny_framing(
    client: TestClient, make_tenant: Callable[..., TenantFixture]
) -> None:
    sign_in(client, make_tenant().key)
    for path in ("/console/jobs", "/console/sign-in", "/docs"):
        answer = client.get(path)
        assert answer.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
        assert answer.headers["x-frame-options"] == "DENY"
        assert answer.headers["cache-control"] == "no-store"
        assert "<script>" not in answer.text  # every script is a file: no inline script
        assert not re.search(r"<script(?![^>]*\b(src|type=\"application/json\"))", answer.text)
    assert "'unsafe-inline'" not in CONTENT_SECURITY_POLICY


def test_docs_load_swagger_ui_from_this_server(client: TestClient) -> None:
    page = client.get("/docs").text
    sources = re.findall(r'(?:src|href)="([^"]+)"', page)
    assert sources
    assert all(s.startswith("/") for s in sources), sources
    for source in sources:
        assert client.get(source).status_code == 200, source


def test_state_changes_need_the_csrf_token(
    client: TestClient, make_tenant: Callable[..., TenantFixture]
) -> None:
    tenant = make_tenant()
    token = sign_in(client, tenant.key)
    refused = client.post("/console/keys", data={"name": "x", "scopes": ["jobs:read"]})
    assert refused.status_code == 403
    assert "did not come from this console" in refused.text
    wrong = client.post("/console/keys", data={"name": "x", "csrf_token": "forged"})
    assert wrong.status_code == 403
    cross_site = client.post(
        "/console/keys",
        data={"name": "x", "csrf_token": token},
        headers={"Origin": "https://evil.example"},
    )
    assert cross_site.status_code == 403
    keys = client.get("/v1/keys", headers=tenant.headers).json()["data"]
    assert len(keys) == 1  # nothing was created
    created = client.post(
        "/console/keys", data={"name": "ci", "scopes": ["jobs:read"], "csrf_token": token}
    )
    assert created.status_code == 201
    assert "shown only this once" in created.text
    assert len(client.get("/v1/keys", headers=tenant.headers).json()["data"]) == 2


def test_another_tenants_job_is_a_404_page(
    client: TestClient, make_tenant: Callable[..., TenantFixture]
) -> None:
    owner, other = make_tenant(), make_tenant()
    submitted = client.post(
        "/v1/jobs",
        json={"pipeline": "tabular-summary", "records": [{"a": 1}]},
        headers=owner.headers,
    )
    assert submitted.status_code == 202, submitted.text
    job = submitted.json()
    sign_in(client, other.key)
    for path in (f"/console/jobs/{job['id']}", f"/console/jobs/{job['id']}/live"):
        answer = client.get(path)
        assert answer.status_code == 404
        assert "text/html" in answer.headers["content-type"]
        assert job["id"] not in answer.text.replace(f"no job with id {job['id']}", "")
    client.cookies.clear()
    sign_in(client, owner.key)
    assert client.get(f"/console/jobs/{job['id']}").status_code == 200


def test_a_tenant_session_cannot_reach_admin_pages(
    client: TestClient, make_tenant: Callable[..., TenantFixture], api_settings: Settings
) -> None:
    tenant = make_tenant()
    token = sign_in(client, tenant.key)
    for path in (
        "/console/admin/tenants",
        "/console/admin/backlog",
        "/console/admin/audit",
        "/console/billing",
        "/console/billing/records.csv",
    ):
        assert client.get(path).status_code == 404, path
    suspend = client.post(f"/console/admin/tenants/{tenant.id}/suspend", data={"csrf_token": token})
    assert suspend.status_code == 404
    admin = {"Authorization": f"Bearer {mint_token(api_settings, 'ops', Role.ADMIN)}"}
    assert client.get(f"/v1/admin/tenants/{tenant.id}", headers=admin).json()["status"] == "active"


def test_billing_sees_billing_only(client: TestClient, api_settings: Settings) -> None:
    sign_in(client, mint_token(api_settings, "finance", Role.BILLING))
    assert client.get("/console/billing").status_code == 200
    assert client.get("/console/admin/tenants").status_code == 404
    assert client.get("/console/jobs", follow_redirects=False).status_code == 404


def test_revoking_the_key_ends_the_session(
    client: TestClient, make_tenant: Callable[..., TenantFixture]
) -> None:
    tenant = make_tenant()
    sign_in(client, tenant.key)
    session_id = next(iter(client.cookies.jar)).value
    key_id = client.get("/v1/keys", headers=tenant.headers).json()["data"][0]["id"]
    admin_token = client.post(
        "/v1/keys", json={"scopes": ["keys:manage"]}, headers=tenant.headers
    ).json()["key"]
    revoked = client.post(
        f"/v1/keys/{key_id}/revoke", headers={"Authorization": f"Bearer {admin_token}"}
    )
    assert revoked.is_success
    answer = client.get("/console/jobs", follow_redirects=False)
    assert answer.status_code == 303
    assert answer.headers["location"] == "/console/sign-in?ended=ended"
    # The session is gone from the store, not only refused once; the cookie is cleared.
    assert sessions.resolve(session_id) is None
    assert 'celeriac_console=""' in answer.headers["set-cookie"]


def test_htmx_requests_are_sent_to_sign_in_as_a_whole_page(client: TestClient) -> None:
    answer = client.get("/console/jobs/rows", headers={"HX-Request": "true"})
    assert answer.status_code == 204
    assert answer.headers["hx-redirect"] == "/console/sign-in"


def test_sign_out_deletes_the_session(
    client: TestClient, make_tenant: Callable[..., TenantFixture]
) -> None:
    token = sign_in(client, make_tenant().key)
    out = client.post("/console/sign-out", data={"csrf_token": token}, follow_redirects=False)
    assert out.status_code == 303
    assert 'celeriac_console=""' in out.headers["set-cookie"]
    assert client.get("/console/jobs", follow_redirects=False).status_code == 303


@pytest.mark.parametrize("which", ["idle", "absolute"])
def test_sessions_end_after_the_idle_and_absolute_timeouts(
    client: TestClient,
    make_tenant: Callable[..., TenantFixture],
    monkeypatch: pytest.MonkeyPatch,
    which: str,
) -> None:
    sign_in(client, make_tenant().key)
    assert client.get("/console/jobs").status_code == 200
    # Move the clock past the deadline instead of waiting for it.
    settings = sessions.get_settings().console
    offset = (
        settings.idle_timeout_seconds if which == "idle" else settings.absolute_timeout_seconds
    ) + 1
    if which == "absolute":
        # Keep the session busy (idle never reached) but past its absolute end.
        real = time.time
        monkeypatch.setattr(sessions.time, "time", lambda: real() + offset)
        for cookie in client.cookies.jar:
            data = sessions.session_store().load(sessions._hash(cookie.value or ""))
            assert data is not None
            data["idle_until"] = real() + offset + 600
            sessions.session_store().save(
                sessions._hash(cookie.value or ""), data, real() + offset + 600
            )
    else:
        real = time.time
        monkeypatch.setattr(sessions.time, "time", lambda: real() + offset)
    answer = client.get("/console/jobs", follow_redirects=False)
    assert answer.status_code == 303
    assert answer.headers["location"] == "/console/sign-in?ended=expired"


def test_console_pages_render_for_a_tenant_and_an_admin(
    client: TestClient, make_tenant: Callable[..., TenantFixture], api_settings: Settings
) -> None:
    tenant = make_tenant()
    sign_in(client, tenant.key)
    for path in (
        "/console/jobs",
        "/console/submit",
        "/console/webhooks",
        "/console/keys",
        "/console/usage",
    ):
        assert client.get(path).status_code == 200, path
    client.cookies.clear()
    sign_in(client, mint_token(api_settings, "ops", Role.ADMIN))
    for path in (
        "/console/admin/tenants",
        f"/console/admin/tenants/{tenant.id}/quotas",
        "/console/admin/backlog",
        "/console/admin/webhooks",
        "/console/admin/audit",
        "/console/billing",
        "/console/billing/records.csv",
    ):
        assert client.get(path).status_code == 200, path


def test_audit_log_api_lists_admin_actions(
    client: TestClient, make_tenant: Callable[..., TenantFixture], admin_headers: dict[str, str]
) -> None:
    tenant = make_tenant()
    client.patch(
        f"/v1/admin/tenants/{tenant.id}", json={"status": "suspended"}, headers=admin_headers
    )
    entries = client.get(
        "/v1/admin/audit-log", params={"tenant_id": tenant.id}, headers=admin_headers
    ).json()["data"]
    assert entries[0]["action"].startswith("tenant.")
    assert entries[0]["tenant_id"] == tenant.id
    assert client.get("/v1/admin/audit-log", headers=tenant.headers).status_code == 401


def test_recover_since_a_time_is_validated(
    client: TestClient, make_tenant: Callable[..., TenantFixture]
) -> None:
    tenant = make_tenant()
    token = sign_in(client, tenant.key)
    created = client.post(
        "/console/webhooks",
        data={"url": "http://127.0.0.1:9/hook", "event_types": ["*"], "csrf_token": token},
    )
    assert created.status_code == 201, created.text
    target_id = client.get("/v1/webhooks", headers=tenant.headers).json()["data"][0]["id"]
    bad = client.post(
        f"/console/webhooks/{target_id}/recover", data={"since": "yesterday", "csrf_token": token}
    )
    assert bad.status_code == 422
    assert "give the time" in bad.text
    good = client.post(
        f"/console/webhooks/{target_id}/recover",
        follow_redirects=False,
        data={"since": "2026-12-01T00:00", "csrf_token": token},
    )
    assert good.status_code == 303
    assert good.headers["location"] == f"/console/webhooks/{target_id}"
