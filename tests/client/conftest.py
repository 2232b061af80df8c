"""A live platform for the SDK and CLI tests: the API under uvicorn on a free loopback
port and, for tests that run jobs, the three worker pools, all on the test's PostgreSQL
database and Redis dbs. The SDK talks to it over real HTTP, as a tenant would."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import TenantFixture

from celeriac.platform.queues import Pool
from celeriac.platform.settings import Settings

from sdk_support import ALL_SCOPES, LivePlatform, healthy, platform_env
from support import free_port
from worker_support import Workers, wait_until


@pytest.fixture
def live_api(api_settings: Settings, var_dir: Path) -> Iterator[LivePlatform]:
    """The API in a process of its own (no workers: jobs stay queued)."""
    port = free_port()
    processes = Workers(var_dir, platform_env(api_settings, var_dir))
    processes.start("api", "api", "--port", str(port))
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: healthy(url), 60, "the API to answer")
        yield LivePlatform(url, processes)
    finally:
        processes.stop_all()


@pytest.fixture
def live_platform(live_api: LivePlatform) -> LivePlatform:
    """The API and the three worker pools; the compute pool has published its plugins."""
    running = live_api.processes
    running.start(
        "orchestration", "worker", "--pool", Pool.ORCHESTRATION.value, "--concurrency", "20"
    )
    running.start(
        "distribution", "worker", "--pool", Pool.DISTRIBUTION.value, "--concurrency", "20"
    )
    running.start("compute", "worker", "--pool", Pool.COMPUTE.value)
    wait_until(
        lambda: all(
            "ready." in running.log(name) for name in ("orchestration", "distribution", "compute")
        ),
        90,
        "the three pools to start",
    )
    wait_until(
        lambda: "plugin registry published" in running.log("compute"),
        60,
        "the compute pool to publish its plugins",
    )
    return live_api


@pytest.fixture
def tenant(make_tenant: Callable[..., TenantFixture]) -> TenantFixture:
    """A tenant with a key holding every scope."""
    return make_tenant("sdk-tenant", scopes=ALL_SCOPES)
