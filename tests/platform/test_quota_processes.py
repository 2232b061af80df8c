"""Quotas across API processes: two real uvicorn processes on one Redis admit exactly the
tenant's rate limit between them, and an admin's change reaches a process within 5 s."""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from conftest import TenantFixture
from fastapi.testclient import TestClient

from celeriac.platform.settings import Settings

from support import celeriac_env, free_port
from worker_support import wait_until

pytestmark = pytest.mark.slow


def _start_api(api_settings: Settings, var_dir: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = celeriac_env(
        var_dir,
        database_url=api_settings.database_url,
        broker_url=api_settings.broker_url,
        redis_url=str(api_settings.redis_url),
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "celeriac.platform.cli", "api", "--port", str(port)],
        env=env,
        cwd=var_dir.parent,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return process, f"http://127.0.0.1:{port}"


def _healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
    except httpx.TransportError:
        return False


@pytest.fixture
def two_apis(api_settings: Settings, var_dir: Path) -> Iterator[list[str]]:
    """Two API processes (default settings: 1 s quota poll) on the test's database and
    Redis, besides the in-process test client."""
    started = [_start_api(api_settings, var_dir) for _ in range(2)]
    try:
        for _, url in started:
            wait_until(lambda url=url: _healthy(url), 60, f"the API at {url} to start")
        yield [url for _, url in started]
    finally:
        for process, _ in started:
            process.terminate()
        for process, _ in started:
            process.wait(timeout=30)


def test_parallel_clients_on_two_processes_are_admitted_up_to_the_limit(
    client: TestClient,
    make_tenant: Callable[..., TenantFixture],
    admin_headers: dict[str, str],
    two_apis: list[str],
) -> None:
    tenant = make_tenant()
    burst, rate = 40, 1
    client.put(
        f"/v1/admin/tenants/{tenant.id}/quotas",
        json={"request_burst": burst, "requests_per_second": rate},
        headers=admin_headers,
    )
    clients, per_client = 12, 10
    statuses: list[int] = []
    lock = threading.Lock()
    go = threading.Barrier(clients)

    def run(index: int) -> None:
        with httpx.Client(base_url=two_apis[index % 2], headers=tenant.headers, timeout=30) as http:
            go.wait()
            for _ in range(per_client):
                answer = http.get("/v1/jobs", params={"limit": 1})
                with lock:
                    statuses.append(answer.status_code)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(clients)]
    began = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - began

    assert set(statuses) <= {200, 429}
    assert len(statuses) == clients * per_client
    admitted = statuses.count(200)
    # The bucket holds `burst`; it refills at `rate` per second while the clients run.
    assert burst - 1 <= admitted <= burst + int(rate * elapsed) + 1, (admitted, elapsed)


_POLICY = re.compile(r'"requests";q=(\d+);w=\d+')


def test_an_admin_change_reaches_every_process_within_five_seconds(
    client: TestClient,
    make_tenant: Callable[..., TenantFixture],
    admin_headers: dict[str, str],
    two_apis: list[str],
) -> None:
    tenant = make_tenant()
    path = f"/v1/admin/tenants/{tenant.id}/quotas"
    client.put(path, json={"request_burst": 500, "requests_per_second": 500}, headers=admin_headers)

    def burst_seen(url: str) -> int:
        answer = httpx.get(f"{url}/v1/quotas", headers=tenant.headers, timeout=5)
        found = _POLICY.search(answer.headers.get("RateLimit-Policy", ""))
        return int(found.group(1)) if found else -1

    for url in two_apis:  # both processes have the limits cached
        assert wait_until(lambda url=url: burst_seen(url) == 500, 10, "the first limits")
    assert (
        client.put(
            path, json={"request_burst": 77, "requests_per_second": 500}, headers=admin_headers
        ).status_code
        == 200
    )
    changed_at = time.monotonic()
    for url in two_apis:
        wait_until(
            lambda url=url: burst_seen(url) == 77, 10, f"{url} to apply the change", every=0.05
        )
        assert time.monotonic() - changed_at < 5.0
    body = httpx.get(f"{two_apis[1]}/v1/quotas", headers=tenant.headers).json()
    assert body["limits"]["request_burst"] == 77
