"""A live platform (an API process and the three worker pools and beat, on this test's
PostgreSQL database and Redis dbs) and Debian's Chromium driven by Playwright.

Playwright never downloads a browser here: it launches ``/usr/bin/chromium`` (``make
browser`` installs it). Each test gets a folder under ``test-results/`` for its
screenshots; :func:`check_page` runs axe-core (vendored, tests/browser/vendor) in the page
and fails on serious or critical violations, and every page's console is watched for
Content-Security-Policy violations.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, BrowserContext, sync_playwright

from celeriac.platform.auth.jwt import Role, mint_token
from celeriac.platform.queues import Pool
from celeriac.platform.settings import Settings

from browser_support import LivePlatform
from support import celeriac_env, free_port
from worker_support import Workers, wait_until

REPO = Path(__file__).resolve().parent.parent.parent
CHROMIUM = os.environ.get("CELERIAC_TEST_CHROMIUM", "/usr/bin/chromium")
RESULTS = REPO / "test-results"
# Small chunks, so that a few hundred records fan out into several tasks per stage.
CHUNK_RECORDS = "150"


@pytest.fixture
def live_platform(api_settings: Settings, var_dir: Path) -> Iterator[LivePlatform]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: run `make browser` (apt-get install chromium)")
    env = celeriac_env(
        var_dir,
        database_url=api_settings.database_url,
        broker_url=api_settings.broker_url,
        redis_url=str(api_settings.redis_url),
        api__auth_cache_poll_seconds="0.2",
        api__quota_cache_poll_seconds="0.2",
        jobs__chunk_records=CHUNK_RECORDS,
        console__poll_seconds="0.5",
        webhooks__allow_http="true",
        webhooks__allowed_cidrs='["127.0.0.0/8", "::1/128"]',
    )
    running = Workers(var_dir, env)
    port = free_port()
    running.start("api", "api", "--port", str(port))
    running.start(
        "orchestration", "worker", "--pool", Pool.ORCHESTRATION.value, "--concurrency", "10"
    )
    running.start(
        "distribution", "worker", "--pool", Pool.DISTRIBUTION.value, "--concurrency", "10"
    )
    running.start("compute", "worker", "--pool", Pool.COMPUTE.value, "--concurrency", "2")
    running.start("beat", "beat")
    url = f"http://127.0.0.1:{port}"
    http = httpx.Client(base_url=url, timeout=30)
    try:
        wait_until(lambda: _healthy(http), 60, "the API to start")
        wait_until(
            lambda: all(
                "ready." in running.log(n) for n in ("orchestration", "distribution", "compute")
            ),
            120,
            "the three pools to start",
        )
        wait_until(
            lambda: "plugin registry published" in running.log("compute"),
            60,
            "the compute pool to publish its plugins",
        )
        token = mint_token(api_settings, "ops@example.com", Role.ADMIN)
        yield LivePlatform(url, api_settings, running, token, http)
    finally:
        http.close()
        running.stop_all()


def _healthy(http: httpx.Client) -> bool:
    try:
        return http.get("/healthz").status_code == 200
    except httpx.TransportError:
        return False


# Module scope, not session: Playwright's sync API keeps an event loop running in this
# thread while it is started, and a later test of the same worker calling asyncio.run()
# would fail ("cannot be called from a running event loop").
@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=CHROMIUM,
            # Root in a container: Chromium's sandbox needs user namespaces it may not have.
            args=["--no-sandbox", "--disable-dev-shm-usage"],
        )
        yield launched
        launched.close()


@pytest.fixture
def output_dir(request: pytest.FixtureRequest) -> Path:
    """This test's own folder for screenshots (test-results/<test name>/)."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", request.node.nodeid.split("::")[-1])
    folder = RESULTS / name
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    return folder


@pytest.fixture
def new_context(browser: Browser) -> Iterator[Callable[[], BrowserContext]]:
    """Opens fresh browser profiles (own cookies and cache), closed after the test."""
    opened: list[BrowserContext] = []

    def open_one() -> BrowserContext:
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        opened.append(context)
        return context

    yield open_one
    for context in opened:
        context.close()
