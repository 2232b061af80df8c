"""The console as a person uses it, in Chromium, against a live platform with real workers:
every page is checked with axe-core and screenshotted under test-results/<test>/."""

from __future__ import annotations

import random
import re
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from playwright.sync_api import BrowserContext, Response, expect

from browser_support import (
    LivePlatform,
    check_page,
    live_counts,
    new_page,
    sign_in,
    wait_for,
    watch_live,
)
from worker_support import Receiver

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("browser")]


def records_csv(path: Path, rows: int = 450) -> Path:
    """Orders with a few outlying amounts and short reviews (numbers and text)."""
    rng = random.Random(7)
    words = [
        "great service",
        "very slow delivery",
        "fine",
        "terrible support, never again",
        "love it",
        "broken on arrival",
        "okay value",
        "excellent and fast",
    ]
    lines = ["id,amount,quantity,text"]
    for i in range(rows):
        amount = round(rng.gauss(50, 5), 2)
        if i in (37, 190, 333):
            amount = round(amount * 6, 2)
        lines.append(f'{i},{amount},{rng.randint(1, 9)},"{rng.choice(words)}"')
    path.write_text("\n".join(lines) + "\n")
    return path


def test_tenant_submits_watches_and_reads_the_results(
    live_platform: LivePlatform, new_context: Callable[[], BrowserContext], output_dir: Path
) -> None:
    _, key = live_platform.make_tenant("acme")
    context = new_context()
    tenant = new_page(context)
    page = tenant.page
    sign_in(tenant, live_platform.url, key)
    expect(page.get_by_role("heading", name="Jobs")).to_be_visible()
    check_page(tenant, output_dir, "01-jobs-empty")

    page.get_by_role("link", name="Submit a job").click()
    page.get_by_label("Records: a CSV file").set_input_files(
        str(records_csv(output_dir / "orders.csv"))
    )
    page.get_by_label("Named pipeline", exact=True).select_option("full")
    page.get_by_label("Priority").select_option("high")
    check_page(tenant, output_dir, "02-submit")
    page.get_by_role("button", name="Submit").click()
    page.wait_for_load_state()
    assert "/console/jobs/" in page.url, page.locator("main").inner_text()
    job_id = page.url.rsplit("/", 1)[1]

    # Watched without reloading: a marker set in this document must survive to the end.
    page.evaluate("() => { window.__sameDocument = true; }")
    watch_live(page)
    state = page.locator("#job-state")
    first = state.get_attribute("data-state")
    assert first in ("queued", "running"), first
    expect(state).to_have_attribute("data-state", "succeeded", timeout=120_000)
    assert page.evaluate("() => window.__sameDocument === true")
    # Driven by the job event stream: every re-read of the page followed a "changed"
    # event, and the stream never failed (which would have started the fallback polling).
    live = live_counts(page)
    assert live["errors"] == 0, live
    assert 1 <= live["rereads"] <= live["changed"], live

    # One bar per task, as the API counts them.
    job = live_platform.http.get(
        f"/v1/jobs/{job_id}", headers={"Authorization": f"Bearer {key}"}
    ).json()
    tasks = sum(stage["total"] for stage in job["progress"].values())
    assert tasks >= 6  # 3 chunks x 2 datasets, then the analyzers
    expect(page.locator("#timeline rect.task-bar")).to_have_count(tasks)
    expect(page.locator("#timeline rect.stage-bar")).to_have_count(len(job["progress"]))

    # The results drawn: the anomalies chart (uPlot's canvas), tables, bars.
    results = page.locator("#results")
    expect(results.get_by_role("heading", name="Anomalies in amount")).to_be_visible()
    assert not tenant.errors, tenant.errors  # a chart that failed to draw says why here
    expect(results.locator(".anomalies-chart canvas").first).to_be_visible()
    expect(results.get_by_text("Summary statistics")).to_be_visible()
    expect(results.get_by_role("img", name="Sentiment distribution")).to_be_visible()
    expect(results.get_by_role("img", name="Top keywords by score")).to_be_visible()
    check_page(tenant, output_dir, "03-job-detail")

    page.get_by_role("link", name="← Jobs").click()
    row = page.locator(f"tr[data-job-id='{job_id}']")
    expect(row.locator(".state")).to_have_text("succeeded")
    check_page(tenant, output_dir, "04-jobs")


def test_a_job_list_updates_while_its_job_runs(
    live_platform: LivePlatform, new_context: Callable[[], BrowserContext], output_dir: Path
) -> None:
    _, key = live_platform.make_tenant("listing")
    tenant = new_page(new_context())
    sign_in(tenant, live_platform.url, key)
    live_platform.workers.stop("compute")  # the job stays running until compute is back
    submitted = live_platform.http.post(
        "/v1/jobs",
        json={"pipeline": "tabular-summary", "records": [{"a": i} for i in range(20)]},
        headers={"Authorization": f"Bearer {key}"},
    ).json()
    page = tenant.page
    page.goto(f"{live_platform.url}/console/jobs")
    page.evaluate("() => { window.__sameDocument = true; }")
    watch_live(page)
    state = page.locator(f"tr[data-job-id='{submitted['id']}'] .state")
    expect(state).not_to_have_text("succeeded")
    # A second page whose event stream is cut off: it falls back to polling.
    cut_off = new_page(new_context())
    sign_in(cut_off, live_platform.url, key)
    cut_off.page.route("**/console/jobs/live-events*", lambda route: route.abort())
    cut_off.page.goto(f"{live_platform.url}/console/jobs")
    watch_live(cut_off.page)
    live_platform.workers.start("compute", "worker", "--pool", "compute", "--concurrency", "1")
    expect(state).to_have_text("succeeded", timeout=120_000)
    assert page.evaluate("() => window.__sameDocument === true")
    live = live_counts(page)
    assert live["errors"] == 0, live
    assert 1 <= live["rereads"] <= live["changed"], live
    check_page(tenant, output_dir, "jobs-updated")
    polled = cut_off.page.locator(f"tr[data-job-id='{submitted['id']}'] .state")
    expect(polled).to_have_text("succeeded", timeout=60_000)
    fallback = live_counts(cut_off.page)
    assert fallback["changed"] == 0, fallback
    assert fallback["rereads"] >= 1, fallback
    cut_off.errors.clear()  # the aborted stream requests are logged as errors
    check_page(cut_off, output_dir, "jobs-updated-by-polling")


def test_tenant_manages_webhooks_and_keys(
    live_platform: LivePlatform, new_context: Callable[[], BrowserContext], output_dir: Path
) -> None:
    _, key = live_platform.make_tenant("hooks")
    receiver = Receiver()
    try:
        tenant = new_page(new_context())
        page = tenant.page
        sign_in(tenant, live_platform.url, key)
        page.get_by_role("link", name="Webhooks").click()
        page.get_by_label("URL").fill(receiver.url)
        page.get_by_label("Description").fill("receiver in the test")
        page.get_by_role("button", name="Add target").click()
        secret = page.locator("#shown-secret code.reveal")
        expect(secret).to_have_text(re.compile("^whsec_"))
        check_page(tenant, output_dir, "01-webhook-created")
        page.get_by_role("link", name="Webhooks").click()
        expect(page.locator("tr[data-target-id]")).to_have_count(1)
        expect(page.locator("#shown-secret")).to_have_count(0)  # shown once only

        page.get_by_role("button", name=f"Send test event for {receiver.url}").click()
        page.wait_for_url("**/console/webhooks/*")
        attempt = page.locator("tr.attempt").first
        expect(attempt).to_have_attribute("data-status", "200", timeout=60_000)
        assert receiver.received, "the receiver got nothing"
        check_page(tenant, output_dir, "02-attempts")

        page.get_by_role("link", name="API keys").click()
        page.get_by_label("Name").fill("deploy bot")
        page.get_by_role("button", name="Create key").click()
        created = page.locator("#shown-key code.reveal").inner_text()
        assert created.startswith("ck_live_")
        check_page(tenant, output_dir, "03-key-created")
        headers = {"Authorization": f"Bearer {created}"}
        assert live_platform.http.get("/v1/jobs", headers=headers).status_code == 200
        page.get_by_role("button", name=re.compile("^Revoke key deploy bot")).click()
        row = page.locator("tr", has_text="deploy bot")
        expect(row.locator(".key-state")).to_have_text("revoked")
        assert wait_for(
            lambda: live_platform.http.get("/v1/jobs", headers=headers).status_code == 401,
            10,
            "the revoked key to be refused",
        )
        check_page(tenant, output_dir, "04-key-revoked")

        page.get_by_role("link", name="Usage").click()
        expect(page.get_by_role("heading", name=re.compile("^Usage and quotas"))).to_be_visible()
        check_page(tenant, output_dir, "05-usage")
    finally:
        receiver.close()


def test_admin_suspends_a_tenant_and_its_session_ends(
    live_platform: LivePlatform, new_context: Callable[[], BrowserContext], output_dir: Path
) -> None:
    _, key = live_platform.make_tenant("suspendme")
    _, other_key = live_platform.make_tenant("busy")
    tenant = new_page(new_context())
    sign_in(tenant, live_platform.url, key)
    expect(tenant.page.get_by_role("heading", name="Jobs")).to_be_visible()

    # Something in the backlog to look at: compute stopped, jobs of two tenants waiting.
    live_platform.workers.stop("compute")
    for priority, who in (("high", key), ("normal", other_key), ("low", other_key)):
        for _ in range(3):
            live_platform.http.post(
                "/v1/jobs",
                json={
                    "pipeline": "tabular-summary",
                    "priority": priority,
                    "records": [{"a": i} for i in range(400)],
                },
                headers={"Authorization": f"Bearer {who}"},
            )

    admin = new_page(new_context())
    page = admin.page
    sign_in(admin, live_platform.url, live_platform.admin_token)
    expect(page.get_by_role("heading", name="Tenants")).to_be_visible()
    check_page(admin, output_dir, "01-tenants")
    page.get_by_role("link", name="Backlog").click()
    expect(page.locator("table.backlog tbody tr").first).not_to_have_text(
        "Nothing is waiting.", timeout=60_000
    )
    check_page(admin, output_dir, "02-backlog")
    page.get_by_role("link", name="Tenants").click()

    page.get_by_role("button", name="Suspend suspendme").click()
    suspended_at = time.monotonic()
    expect(page.locator("tr[data-tenant='suspendme'] .state")).to_have_text("suspended")

    def tenant_signed_out() -> bool:
        tenant.page.goto(f"{live_platform.url}/console/jobs")
        return "/console/sign-in" in tenant.page.url

    wait_for(tenant_signed_out, 10, "the tenant's session to end")
    assert time.monotonic() - suspended_at < 5.0
    expect(tenant.page.get_by_text("Your session ended")).to_be_visible()
    check_page(tenant, output_dir, "03-tenant-signed-out")

    page.get_by_role("link", name="Audit log").click()
    expect(page.get_by_text("tenant.update").first).to_be_visible()
    check_page(admin, output_dir, "04-audit")
    for link, name in (("Webhook health", "05-webhook-health"), ("Billing", "06-billing")):
        page.get_by_role("link", name=link).click()
        check_page(admin, output_dir, name)
    page.get_by_role("link", name="Tenants").click()
    page.get_by_role("link", name="Quotas of busy").click()
    page.get_by_label("max running jobs").fill("3")
    page.get_by_role("button", name="Save quotas").click()
    expect(page.get_by_label("max running jobs")).to_have_value("3")
    check_page(admin, output_dir, "07-quotas")
    live_platform.workers.start("compute", "worker", "--pool", "compute", "--concurrency", "2")


def test_docs_work_offline(
    live_platform: LivePlatform, new_context: Callable[[], BrowserContext], output_dir: Path
) -> None:
    context = new_context()
    requested: list[str] = []
    context.on("request", lambda request: requested.append(request.url))
    docs = new_page(context)
    docs.page.goto(f"{live_platform.url}/docs")
    expect(docs.page.get_by_text("POST/v1/jobs").first).to_be_visible(timeout=30_000)
    docs.page.screenshot(path=str(output_dir / "docs.png"))
    assert requested
    assert all(url.startswith(live_platform.url) or url.startswith("data:") for url in requested), (
        requested
    )
    assert not docs.errors, docs.errors


def test_first_load_of_the_jobs_page_is_under_500_kb(
    live_platform: LivePlatform, new_context: Callable[[], BrowserContext], output_dir: Path
) -> None:
    _, key = live_platform.make_tenant("weigh")
    context = new_context()
    watched = new_page(context)
    sign_in(watched, live_platform.url, key)
    cold = new_context()  # a new profile: nothing cached
    cookies = context.cookies()
    cold.add_cookies(cookies)
    sizes: dict[str, int] = {}
    page = cold.new_page()

    def on_response(response: Response) -> None:
        sizes[response.url] = len(response.body())

    page.on("response", on_response)
    page.goto(f"{live_platform.url}/console/jobs")
    page.wait_for_load_state("networkidle")
    total = sum(sizes.values())
    (output_dir / "first-load.txt").write_text(
        "\n".join(f"{n:>8} {u}" for u, n in sorted(sizes.items())) + f"\n{total:>8} total\n"
    )
    assert total < 500_000, sizes
