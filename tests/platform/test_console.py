"""The console's sessions and security, through HTTP (the browser flows are in
tests/browser): cookie flags, CSRF, headers, tenant scoping, sessions ending."""

from __future__ import annotations

import csv
import html
import io
import re
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import httpx
import pytest
from conftest import TenantFixture
from fastapi.testclient import TestClient
from sqlalchemy import update

from celeriac.platform.auth.context import TenantContext
from celeriac.platform.auth.jwt import Role, mint_token
from celeriac.platform.console import sessions, views
from celeriac.platform.console.web import CONTENT_SECURITY_POLICY
from celeriac.platform.db import get_sessionmaker
from celeriac.platform.jobs import service
from celeriac.platform.jobs.pipelines import ANALYZER, DATASET, PluginInfo, register_plugins
from celeriac.platform.jobs.repository import JobRepository
from celeriac.platform.models import (
    DeliveryState,
    Job,
    JobStage,
    JobTask,
    TaskState,
    WebhookDelivery,
    utcnow,
)
from celeriac.platform.quotas.plans import LIMIT_NAMES, PLANS
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


def _create_target(
    client: TestClient, tenant: TenantFixture, token: str
) -> tuple[httpx.Response, str]:
    """A webhook target created from the console's form (201), and its id from the API."""
    created = client.post(
        "/console/webhooks",
        data={"url": "http://127.0.0.1:9/hook", "event_types": ["*"], "csrf_token": token},
    )
    assert created.status_code == 201, created.text
    target_id = client.get("/v1/webhooks", headers=tenant.headers).json()["data"][0]["id"]
    return created, target_id


def test_recover_since_a_time_is_validated(
    client: TestClient, make_tenant: Callable[..., TenantFixture]
) -> None:
    tenant = make_tenant()
    token = sign_in(client, tenant.key)
    _, target_id = _create_target(client, tenant, token)
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


def _sse(text: str) -> list[tuple[str, str]]:
    """(event, data) of a finished text/event-stream body."""
    found = []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        fields = dict(
            line.split(": ", 1) for line in block.splitlines() if ": " in line and line[0] != ":"
        )
        if "event" in fields:
            found.append((fields["event"], fields.get("data", "")))
    return found


def test_the_live_stream_is_scoped_to_the_sessions_tenant(
    client: TestClient, make_tenant: Callable[..., TenantFixture]
) -> None:
    owner, other = make_tenant(), make_tenant()
    job = client.post(
        "/v1/jobs",
        json={"pipeline": "tabular-summary", "records": [{"a": 1}]},
        headers=owner.headers,
    ).json()
    assert client.post(f"/v1/jobs/{job['id']}/cancel", headers=owner.headers).is_success
    path = f"/console/jobs/live-events?w={job['id']}_0.0.0.0&progress=1"
    # Another tenant watching the job's id learns nothing: the stream just ends.
    sign_in(client, other.key)
    answer = client.get(path)
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/event-stream")
    assert _sse(answer.text) == [("end", '"ended"')]
    # Its owner's page, rendered while it was queued, is told to re-read, then the end.
    client.cookies.clear()
    sign_in(client, owner.key)
    events = _sse(client.get(path).text)
    assert events == [("changed", f'["{job["id"]}"]'), ("end", '"ended"')]
    # A page rendered after the cancel (cursor 2) is told nothing but the end.
    assert _sse(client.get(path.replace("_0.0.0.0", "_2.0.0.0")).text) == [("end", '"ended"')]


def test_the_live_stream_refuses_a_malformed_watch_and_needs_a_session(
    client: TestClient, make_tenant: Callable[..., TenantFixture]
) -> None:
    answer = client.get("/console/jobs/live-events?w=x", follow_redirects=False)
    assert answer.status_code == 303
    assert answer.headers["location"].startswith("/console/sign-in")
    sign_in(client, make_tenant().key)
    for query in ("w=not-a-job_0.0.0.0", "w=00000000-0000-0000-0000-000000000001_9.9", ""):
        answer = client.get(f"/console/jobs/live-events?{query}")
        assert 400 <= answer.status_code < 500, (query, answer.status_code)


def test_a_tenant_filters_pages_cancels_and_reruns_jobs(
    client: TestClient, make_tenant: Callable[..., TenantFixture]
) -> None:
    tenant = make_tenant()
    ids = [
        client.post(
            "/v1/jobs",
            json={"pipeline": "tabular-summary", "records": [{"a": i}]},
            headers=tenant.headers,
        ).json()["id"]
        for i in range(27)
    ]
    token = sign_in(client, tenant.key)
    # Cancel the newest from its page: it shows cancelled and offers a re-run.
    cancelled = client.post(
        f"/console/jobs/{ids[-1]}/cancel", data={"csrf_token": token}, follow_redirects=False
    )
    assert cancelled.status_code == 303
    page = client.get(cancelled.headers["location"]).text
    assert 'data-state="cancelled"' in page
    assert "Re-run" in page
    assert "Cancel job" not in page
    # Re-run it: a new job with the same records, linked to the first.
    rerun = client.post(
        f"/console/jobs/{ids[-1]}/rerun", data={"csrf_token": token}, follow_redirects=False
    )
    assert rerun.status_code == 303, rerun.text
    new_id = rerun.headers["location"].rsplit("/", 1)[1]
    again = client.get(f"/v1/jobs/{new_id}", headers=tenant.headers).json()
    assert again["record_count"] == 1
    assert again["rerun_of"] == ids[-1]
    # Filter by state, then page: 25 a page, the rest behind "Older jobs".
    only = client.get("/console/jobs", params={"state": "cancelled"}).text
    assert only.count("<tr data-job-id=") == 1
    assert ids[-1] in only
    first = client.get("/console/jobs").text
    assert first.count("<tr data-job-id=") == 25
    older = re.search(r'href="(/console/jobs\?state=&amp;cursor=[^"]+)">Older jobs', first)
    assert older is not None
    rest = client.get(older.group(1).replace("&amp;", "&")).text
    assert rest.count("<tr data-job-id=") == 3  # 27 + the re-run - 25
    assert ids[0] in rest
    assert ids[0] not in first
    # Queued jobs on the page: it follows their event stream, the cancelled one not.
    assert 'sse-connect="/console/jobs/live-events?w=' in first


def test_a_tenant_rolls_a_key_and_sees_the_new_one_once(
    client: TestClient, make_tenant: Callable[..., TenantFixture]
) -> None:
    tenant = make_tenant()
    token = sign_in(client, tenant.key)
    key_id = client.get("/v1/keys", headers=tenant.headers).json()["data"][0]["id"]
    rolled = client.post(f"/console/keys/{key_id}/roll", data={"csrf_token": token})
    assert rolled.status_code == 201
    shown = re.search(r'<code class="reveal">(ck_live_[^<]+)</code>', rolled.text)
    assert shown is not None
    new_key = {"Authorization": f"Bearer {shown.group(1)}"}
    assert client.get("/v1/jobs", headers=new_key).status_code == 200
    assert client.get("/v1/jobs", headers=tenant.headers).status_code == 200  # grace
    assert shown.group(1) not in client.get("/console/keys").text


def test_a_running_jobs_detail_from_its_timeline_rows_is_job_details(
    client: TestClient, make_tenant: Callable[..., TenantFixture]
) -> None:
    """A running job's page computes the detail's per-stage progress and failed tasks from
    the task rows it reads for the timeline (views.detail_of): the same as the service's
    job_detail, which the JSON API returns."""
    tenant = make_tenant()
    submitted = client.post(
        "/v1/jobs",
        json={"pipeline": "tabular-summary", "records": [{"a": 1}]},
        headers=tenant.headers,
    )
    assert submitted.status_code == 202, submitted.text
    job_id = uuid.UUID(submitted.json()["id"])
    tenant_id = uuid.UUID(tenant.id)
    start = utcnow() - timedelta(minutes=1)
    states = [TaskState.SUCCEEDED, TaskState.FAILED, TaskState.RUNNING, TaskState.TIMED_OUT]
    with get_sessionmaker().begin() as session:
        for n in range(40):
            state = TaskState.PENDING if n >= 36 else states[n % 4]
            started = None if state is TaskState.PENDING else start + timedelta(seconds=n)
            ended = started is not None and state is not TaskState.RUNNING
            session.add(
                JobTask(
                    tenant_id=tenant_id,
                    job_id=job_id,
                    task_key=f"task-{n}",
                    stage=JobStage.DATASETS if n < 20 else JobStage.ANALYSIS,
                    plugin="tabular" if n % 3 else "summary",
                    chunk=None if n % 5 == 0 else n,
                    input_key="in",
                    state=state,
                    attempts=1 + n % 2,
                    started_at=started,
                    finished_at=started + timedelta(seconds=2) if ended and started else None,
                    duration_ms=2000 if ended else None,
                    error=f"ValueError {n}" if state is TaskState.FAILED else None,
                )
            )
    ctx = TenantContext(tenant_id, tenant.slug, uuid.uuid4(), frozenset())
    with get_sessionmaker()() as session:
        job = JobRepository(session, ctx).get(job_id)
        expected = service.job_detail(session, ctx, job_id)
        computed = views.detail_of(job, views.tasks_of(session, tenant_id, job_id))
    assert computed.progress == expected.progress
    assert computed.errors == expected.errors
    assert len(computed.errors) == 18  # failed and timed out, chunk order within a stage
    assert computed.model_dump(exclude={"duration_ms"}) == expected.model_dump(
        exclude={"duration_ms"}
    )
    sign_in(client, tenant.key)
    live = client.get(f"/console/jobs/{job_id}/live")
    assert live.status_code == 200
    assert live.text.count('class="task-bar ') == 40
    assert "ValueError 1</td>" in live.text


def test_a_held_job_shows_why_it_waits_as_the_api_says(
    client: TestClient, make_tenant: Callable[..., TenantFixture]
) -> None:
    tenant = make_tenant()
    job_id = client.post(
        "/v1/jobs",
        json={"pipeline": "tabular-summary", "records": [{"a": 1}]},
        headers=tenant.headers,
    ).json()["id"]
    # What the orchestrator writes when the tenant's running-job limit holds a job.
    with get_sessionmaker()() as session:
        session.execute(update(Job).where(Job.id == uuid.UUID(job_id)).values(held_since=utcnow()))
        session.commit()
    reason = client.get(f"/v1/jobs/{job_id}", headers=tenant.headers).json()["waiting_reason"]
    assert reason["reason"] == "running-job-limit"
    sign_in(client, tenant.key)
    page = client.get(f"/console/jobs/{job_id}").text
    shown = re.search(r'<p class="alert" id="waiting-reason" data-reason="([^"]+)">(.*?)</p>', page)
    assert shown is not None
    assert shown.group(1) == "running-job-limit"
    assert reason["detail"] in html.unescape(shown.group(2))


# --- features a user sees: webhooks, submit, admin, billing, keyboard ------------------


def _shown_secret(page: str) -> str:
    """The secret a page shows once (the webhooks page's alert)."""
    found = re.search(r'<code class="reveal">(whsec_[^<]+)</code>', page)
    assert found is not None, page
    return found.group(1)


def _target_state(page: str, target_id: str) -> str:
    row = re.search(
        rf'<tr data-target-id="{target_id}">.*?<span class="state state-(\w+)">', page, re.S
    )
    assert row is not None, page
    return row.group(1)


def test_a_tenant_manages_a_webhook_target_from_the_console(
    client: TestClient, make_tenant: Callable[..., TenantFixture]
) -> None:
    tenant = make_tenant()
    token = sign_in(client, tenant.key)
    created, target_id = _create_target(client, tenant, token)
    secret = _shown_secret(created.text)
    api = f"/v1/webhooks/{target_id}"
    # Shown once: the page read again does not show it.
    listed = client.get("/console/webhooks").text
    assert secret not in listed
    assert 'id="shown-secret"' not in listed
    assert _target_state(listed, target_id) == "enabled"
    # Disable, then enable: the page's state and the API's follow.
    for action, state, offered in (
        ("disable", "disabled", "Enable"),
        ("enable", "enabled", "Disable"),
    ):
        answer = client.post(
            f"/console/webhooks/{target_id}/{action}",
            data={"csrf_token": token},
            follow_redirects=False,
        )
        assert answer.status_code == 303, answer.text
        assert answer.headers["location"] == f"/console/webhooks/{target_id}"
        assert client.get(api, headers=tenant.headers).json()["state"] == state
        page = client.get("/console/webhooks").text
        assert _target_state(page, target_id) == state
        assert f'aria-label="{offered} for http://127.0.0.1:9/hook"' in page
        detail = client.get(answer.headers["location"]).text
        assert f'<span class="state state-{state}">{state}</span>' in detail
    # Rotate: a new secret, shown once; the API shows the old one still signs for a while.
    assert client.get(api, headers=tenant.headers).json()["previous_secret_expires_at"] is None
    rotated = client.post(f"/console/webhooks/{target_id}/rotate", data={"csrf_token": token})
    assert rotated.status_code == 200, rotated.text
    new_secret = _shown_secret(rotated.text)
    assert new_secret != secret
    assert new_secret not in client.get("/console/webhooks").text
    overlap = client.get(api, headers=tenant.headers).json()["previous_secret_expires_at"]
    assert overlap is not None
    hours = (datetime.fromisoformat(overlap) - utcnow()).total_seconds() / 3600
    assert 23 < hours <= 24


def test_a_tenant_sends_a_test_event_and_resends_its_message(
    client: TestClient, make_tenant: Callable[..., TenantFixture]
) -> None:
    tenant = make_tenant()
    token = sign_in(client, tenant.key)
    _, target_id = _create_target(client, tenant, token)
    sent = client.post(
        f"/console/webhooks/{target_id}/test", data={"csrf_token": token}, follow_redirects=False
    )
    assert sent.status_code == 303, sent.text
    assert sent.headers["location"] == f"/console/webhooks/{target_id}"
    messages = client.get("/v1/webhook-messages", headers=tenant.headers).json()["data"]
    assert [m["event_type"] for m in messages] == ["webhook.test"]
    message = messages[0]
    (delivery,) = message["deliveries"]
    assert delivery["target_id"] == target_id
    # What the delivery worker writes when every attempt failed (no workers run here).
    with get_sessionmaker().begin() as session:
        session.execute(
            update(WebhookDelivery)
            .where(WebhookDelivery.id == uuid.UUID(delivery["id"]))
            .values(state=DeliveryState.FAILED, attempt_count=5, next_attempt_at=None)
        )
    resent = client.post(
        f"/console/webhook-messages/{message['id']}/resend",
        data={"target_id": target_id, "csrf_token": token},
        follow_redirects=False,
    )
    assert resent.status_code == 303, resent.text
    assert resent.headers["location"] == f"/console/webhooks/{target_id}"
    again = client.get("/v1/webhook-messages", headers=tenant.headers).json()["data"][0]
    assert again["deliveries"][0]["state"] == "pending"
    assert again["deliveries"][0]["attempt_count"] == 0
    assert again["deliveries"][0]["next_attempt_at"] is not None
    # A message never sent to that target: a 404 page, nothing restarted.
    other = make_tenant()
    other_target = client.post(
        "/v1/webhooks",
        json={"url": "http://127.0.0.1:9/other", "event_types": ["*"]},
        headers=other.headers,
    )
    assert other_target.status_code == 201, other_target.text
    refused = client.post(
        f"/console/webhook-messages/{message['id']}/resend",
        data={"target_id": other_target.json()["id"], "csrf_token": token},
    )
    assert refused.status_code == 404
    # A disabled target refuses a test event, and says why.
    client.post(f"/console/webhooks/{target_id}/disable", data={"csrf_token": token})
    blocked = client.post(f"/console/webhooks/{target_id}/test", data={"csrf_token": token})
    assert blocked.status_code == 409
    assert "enable it first" in blocked.text


def _submit(
    client: TestClient, token: str, data: dict[str, Any], name: str, body: bytes, kind: str
) -> str:
    """Submit the form; returns the new job's id from the redirect."""
    answer = client.post(
        "/console/submit",
        data={"csrf_token": token, **data},
        files={"file": (name, body, kind)},
        follow_redirects=False,
    )
    assert answer.status_code == 303, answer.text
    found = re.fullmatch(r"/console/jobs/([0-9a-f-]{36})", answer.headers["location"])
    assert found is not None, answer.headers["location"]
    return found.group(1)


def test_the_submit_page_builds_a_pipeline_and_takes_ndjson(
    client: TestClient, make_tenant: Callable[..., TenantFixture]
) -> None:
    tenant = make_tenant()
    token = sign_in(client, tenant.key)
    page = client.get("/console/submit").text
    # The builder offers what the pool registered.
    for box in ('name="dataset" value="tabular"', 'name="analyzer" value="anomalies"'):
        assert box in page
    csv_body = b"a,b\n1,2\n3,4\n5,6\n"
    custom = _submit(
        client,
        token,
        {
            "mode": "custom",
            "dataset": ["tabular"],
            "analyzer": ["summary", "anomalies"],
            "priority": "high",
        },
        "rows.csv",
        csv_body,
        "text/csv",
    )
    job = client.get(f"/v1/jobs/{custom}", headers=tenant.headers).json()
    assert [d["name"] for d in job["pipeline"]["datasets"]] == ["tabular"]
    assert [a["name"] for a in job["pipeline"]["analyzers"]] == ["summary", "anomalies"]
    assert job["record_count"] == 3
    assert job["priority"] == "high"
    ndjson = b'{"a": 1}\n{"a": 2}\n{"a": 3}\n{"a": 4}\n'
    named = _submit(
        client,
        token,
        {"mode": "named", "pipeline": "tabular-summary"},
        "rows.ndjson",
        ndjson,
        "application/x-ndjson",
    )
    job = client.get(f"/v1/jobs/{named}", headers=tenant.headers).json()
    assert job["record_count"] == 4
    same = client.post(
        "/v1/jobs",
        json={"pipeline": "tabular-summary", "records": [{"a": 1}]},
        headers=tenant.headers,
    ).json()["id"]
    assert (
        job["pipeline"] == client.get(f"/v1/jobs/{same}", headers=tenant.headers).json()["pipeline"]
    )
    # Custom with no analyzer ticked: refused on the page, no job made.
    before = len(client.get("/v1/jobs", headers=tenant.headers).json()["data"])
    refused = client.post(
        "/console/submit",
        data={"csrf_token": token, "mode": "custom", "dataset": ["tabular"]},
        files={"file": ("rows.csv", csv_body, "text/csv")},
    )
    assert refused.status_code == 422
    assert "choose at least one dataset and one analyzer" in refused.text
    assert len(client.get("/v1/jobs", headers=tenant.headers).json()["data"]) == before


def _tenant_row(page: str, slug: str) -> str:
    row = re.search(rf'<tr data-tenant="{slug}">(.*?)</tr>', page, re.S)
    assert row is not None, page
    return row.group(1)


def test_an_admin_creates_suspends_resumes_and_deletes_a_tenant(
    client: TestClient, admin_headers: dict[str, str], api_settings: Settings
) -> None:
    token = sign_in(client, mint_token(api_settings, "ops", Role.ADMIN))
    slug = f"console-{uuid.uuid4().hex[:8]}"
    created = client.post(
        "/console/admin/tenants",
        data={"slug": slug, "name": "Console Ltd", "plan": "pro", "csrf_token": token},
        follow_redirects=False,
    )
    assert created.status_code == 303, created.text
    page = client.get(created.headers["location"]).text
    assert '<span class="state state-active">active</span>' in _tenant_row(page, slug)
    listed = client.get("/v1/admin/tenants", headers=admin_headers).json()["data"]
    (tenant,) = [t for t in listed if t["slug"] == slug]
    assert tenant["plan"] == "pro"
    api = f"/v1/admin/tenants/{tenant['id']}"
    for action, status in (("suspend", "suspended"), ("resume", "active")):
        answer = client.post(
            f"/console/admin/tenants/{tenant['id']}/{action}",
            data={"csrf_token": token},
            follow_redirects=False,
        )
        assert answer.status_code == 303, answer.text
        assert client.get(api, headers=admin_headers).json()["status"] == status
        row = _tenant_row(client.get("/console/admin/tenants").text, slug)
        assert f'<span class="state state-{status}">{status}</span>' in row
        assert ("Resume" if status == "suspended" else "Suspend") + f" {slug}" in row
    # A wrong slug refuses, and the tenant stays.
    for wrong in ("", slug.upper(), slug + "x"):
        refused = client.post(
            f"/console/admin/tenants/{tenant['id']}/delete",
            data={"confirm": wrong, "csrf_token": token},
        )
        assert refused.status_code == 422
        assert f"type the tenant&#39;s slug ({slug}) to delete it" in refused.text
        assert client.get(api, headers=admin_headers).json()["status"] == "active"
    deleted = client.post(
        f"/console/admin/tenants/{tenant['id']}/delete",
        data={"confirm": slug, "csrf_token": token},
        follow_redirects=False,
    )
    assert deleted.status_code == 303, deleted.text
    assert client.get(api, headers=admin_headers).json()["status"] == "deleted"
    row = _tenant_row(client.get("/console/admin/tenants").text, slug)
    assert "Delete" not in row  # nothing more to do to a deleted tenant


def test_the_quotas_page_shows_the_plan_default_beside_each_limit(
    client: TestClient,
    make_tenant: Callable[..., TenantFixture],
    api_settings: Settings,
    admin_headers: dict[str, str],
) -> None:
    tenant = make_tenant()
    plan = client.get(f"/v1/admin/tenants/{tenant.id}", headers=admin_headers).json()["plan"]
    defaults = PLANS[plan].as_dict()
    token = sign_in(client, mint_token(api_settings, "ops", Role.ADMIN))
    override = defaults["max_running_jobs"] + 3
    saved = client.post(
        f"/console/admin/tenants/{tenant.id}/quotas",
        data={"max_running_jobs": str(override), "csrf_token": token},
        follow_redirects=False,
    )
    assert saved.status_code == 303, saved.text
    page = client.get(saved.headers["location"]).text
    rows = {
        m.group(1): m.groups()[1:]
        for m in re.finditer(
            r'<label for="q-(\w+)">.*?value="([^"]*)"></td>\s*'
            r'<td class="num">(\d+)</td><td class="num">(\d+)</td>',
            page,
            re.S,
        )
    }
    assert set(rows) == set(LIMIT_NAMES)
    for name, (value, default, in_force) in rows.items():
        assert int(default) == defaults[name], name
        if name == "max_running_jobs":
            assert (value, int(in_force)) == (str(override), override)
        else:
            assert (value, int(in_force)) == ("", defaults[name]), name


def test_the_billing_csv_is_the_apis_csv_for_the_month(
    client: TestClient, make_tenant: Callable[..., TenantFixture], api_settings: Settings
) -> None:
    tenant = make_tenant()
    for i in range(3):
        submitted = client.post(
            "/v1/jobs",
            json={"pipeline": "tabular-summary", "records": [{"a": i}]},
            headers=tenant.headers,
        )
        assert submitted.status_code == 202, submitted.text
    billing = mint_token(api_settings, "finance", Role.BILLING)
    sign_in(client, billing)
    month = utcnow().strftime("%Y-%m")
    exported = client.get("/console/billing/records.csv", params={"month": month})
    assert exported.status_code == 200
    assert exported.headers["content-type"].startswith("text/csv")
    assert f'filename="usage-{month}.csv"' in exported.headers["content-disposition"]
    start = datetime.strptime(month, "%Y-%m").replace(tzinfo=UTC)
    end = (start + timedelta(days=32)).replace(day=1)
    api_rows: list[list[str]] = []
    params: dict[str, str] = {
        "occurred_after": start.isoformat(),
        "occurred_before": end.isoformat(),
        "limit": "1000",
    }
    while True:
        page = client.get(
            "/v1/usage/records",
            params=params,
            headers={"Authorization": f"Bearer {billing}", "Accept": "text/csv"},
        )
        assert page.status_code == 200, page.text
        assert page.headers["content-type"].startswith("text/csv")
        rows = list(csv.reader(io.StringIO(page.text)))
        api_rows.extend(rows if not api_rows else rows[1:])
        found = re.search(r"cursor=([^&>]+)", page.headers.get("link", ""))
        if found is None:
            break
        params["cursor"] = unquote(found.group(1))
    console_rows = list(csv.reader(io.StringIO(exported.text)))
    assert console_rows[0] == api_rows[0]  # the same columns, in the same order
    assert console_rows == api_rows
    tenant_column = console_rows[0].index("tenant_id")
    assert sum(row[tenant_column] == tenant.id for row in console_rows[1:]) >= 3


TEMPLATES = Path(views.__file__).parent / "templates"
CONSOLE_JS = Path(views.__file__).parent / "static" / "console.js"
_CONTROL = re.compile(r"<(a|button|input|select|textarea|summary)\b[^>]*>", re.I | re.S)
_TABINDEX = re.compile(r"""\btabindex\s*=\s*["']?\s*(-?\d+)""", re.I)


def unreachable_controls(text: str) -> list[str]:
    """Tags of controls taken out of the tab order (tabindex -1) or put ahead of it (> 0)."""
    return [
        tag.group(0)
        for tag in _CONTROL.finditer(text)
        if any(int(n) != 0 for n in _TABINDEX.findall(tag.group(0)))
    ]


def click_only_handlers(js: str) -> list[str]:
    """Pointer-only handlers in the console's script: any ``addEventListener("click"`` (or
    dblclick, mouse*) or ``.onclick =``. The console binds none (what it binds is "change" on
    checkboxes, which a keyboard fires too, and htmx/DOM lifecycle events), so this is
    stricter than "no click handler on a non-focusable element": a new click handler has to
    come with a reason and a change here."""
    found = re.findall(r"""addEventListener\(\s*["'](?:click|dblclick|mouse\w+)["']""", js)
    found += re.findall(r"\.on(?:click|dblclick|mouse\w+)\s*=", js)
    return found


def test_no_console_control_is_out_of_keyboard_reach() -> None:
    files = sorted(TEMPLATES.rglob("*.html"))
    assert len(files) > 10
    for path in files:
        text = path.read_text()
        assert unreachable_controls(text) == [], path
        # Nothing in the templates carries a click handler either (htmx triggers are
        # form submits, loads, timers and stream events).
        assert not re.search(r"\bon(click|mouse\w+)\s*=", text, re.I), path
        assert not re.search(r'hx-trigger="[^"]*\bclick\b', text), path
    assert click_only_handlers(CONSOLE_JS.read_text()) == []
    # What the script binds: change on checkboxes, and htmx/DOM lifecycle events.
    bound = set(re.findall(r"""addEventListener\(\s*["']([\w:]+)["']""", CONSOLE_JS.read_text()))
    assert bound == {
        "change",
        "htmx:sseError",
        "htmx:sseOpen",
        "DOMContentLoaded",
        "htmx:afterSettle",
    }


def test_the_keyboard_checks_would_catch_an_unreachable_control() -> None:
    assert unreachable_controls('<button tabindex="-1">x</button>')
    assert unreachable_controls("<a href='/x' tabindex='2'>x</a>")
    assert unreachable_controls('<input\n  type="text" tabindex=3>')
    assert not unreachable_controls('<button tabindex="0">x</button><div tabindex="-1"></div>')
    assert click_only_handlers('row.addEventListener("click", open);')
    assert click_only_handlers("cell.onclick = open;")
    assert not click_only_handlers('box.addEventListener("change", tick);')
