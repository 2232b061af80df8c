"""The console's sessions and security, through HTTP (the browser flows are in
tests/browser): cookie flags, CSRF, headers, tenant scoping, sessions ending."""

from __future__ import annotations

import html
import re
import time
import uuid
from collections.abc import Callable
from datetime import timedelta

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
from celeriac.platform.models import Job, JobStage, JobTask, TaskState, utcnow
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
