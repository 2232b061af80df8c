"""Helpers of the browser tests (tests/browser): the live platform's handle, watched pages,
the axe-core check and signing in."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from playwright.sync_api import BrowserContext, ConsoleMessage, Page

from celeriac.platform.settings import Settings

from worker_support import Workers, wait_until

AXE = Path(__file__).resolve().parent / "browser" / "vendor" / "axe.min.js"


@dataclass
class LivePlatform:
    url: str
    settings: Settings
    workers: Workers
    admin_token: str
    http: httpx.Client = field(repr=False)

    def admin(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.admin_token}"}

    def make_tenant(self, slug: str) -> tuple[str, str]:
        """A tenant and a key with every scope: (tenant id, key)."""
        created = self.http.post(
            "/v1/admin/tenants", json={"slug": slug, "name": slug.title()}, headers=self.admin()
        )
        assert created.status_code == 201, created.text
        tenant_id = created.json()["id"]
        key = self.http.post(
            f"/v1/admin/tenants/{tenant_id}/keys",
            json={
                "name": "console",
                "scopes": ["jobs:write", "jobs:read", "webhooks:manage", "keys:manage"],
            },
            headers=self.admin(),
        )
        assert key.status_code == 201, key.text
        return tenant_id, key.json()["key"]


@dataclass
class Watched:
    """A browser page whose console errors (a CSP violation among them) are kept."""

    page: Page
    errors: list[str] = field(default_factory=list)


def new_page(context: BrowserContext) -> Watched:
    page = context.new_page()
    watched = Watched(page)

    def on_console(message: ConsoleMessage) -> None:
        if message.type == "error":
            watched.errors.append(message.text)

    page.on("console", on_console)
    page.on("pageerror", lambda error: watched.errors.append(str(error)))
    return watched


def check_page(watched: Watched, output_dir: Path, name: str) -> dict[str, Any]:
    """Screenshot the page, run axe-core in it and fail on a serious or critical violation
    or on any console error (a blocked inline script or style shows up there)."""
    page = watched.page
    page.screenshot(path=str(output_dir / f"{name}.png"), full_page=True)
    # evaluate() runs through the DevTools protocol, which the page's CSP does not govern:
    # the page itself still may not load any script but its own files.
    page.evaluate(AXE.read_text())
    report: dict[str, Any] = page.evaluate("() => axe.run(document, {resultTypes: ['violations']})")
    bad = [
        f"{v['id']} ({v['impact']}): {v['help']} at {[n['target'] for n in v['nodes']][:3]}"
        for v in report["violations"]
        if v.get("impact") in ("serious", "critical")
    ]
    assert not bad, f"{name}: axe-core found {bad}"
    assert not watched.errors, f"{name}: console errors {watched.errors}"
    return report


def sign_in(watched: Watched, url: str, credential: str) -> None:
    page = watched.page
    page.goto(f"{url}/console")
    page.get_by_label("API key (tenants) or admin / billing token").fill(credential)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_load_state()


def wait_for(condition: Any, timeout: float, what: str) -> Any:
    return wait_until(condition, timeout, what, every=0.2)


# Counts, in the page, what its live updates did: messages of the job event stream
# (htmx's SSE extension), stream errors, and the fragment re-reads htmx made.
_LIVE_PROBE = """() => {
  window.__live = {changed: 0, errors: 0, opened: 0, rereads: 0};
  const live = window.__live;
  document.body.addEventListener("htmx:sseMessage", (e) => {
    if (e.detail && e.detail.type === "changed") { live.changed += 1; }
  });
  document.body.addEventListener("htmx:sseError", () => { live.errors += 1; });
  document.body.addEventListener("htmx:sseOpen", () => { live.opened += 1; });
  document.body.addEventListener("htmx:beforeRequest", () => { live.rereads += 1; });
}"""


def watch_live(page: Page) -> None:
    """Start counting the page's live-update activity (see :func:`live_counts`)."""
    page.evaluate(_LIVE_PROBE)


def live_counts(page: Page) -> dict[str, int]:
    counts: dict[str, int] = page.evaluate("() => window.__live")
    return counts
