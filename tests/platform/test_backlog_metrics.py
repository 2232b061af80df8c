"""The per-pool demand KEDA scales on: tenant backlogs plus ready queues plus the tasks
live workers hold, summed per pool, without authentication and without tenant names."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import redis
from celery import Celery
from conftest import TenantFixture, clear_process_caches
from fastapi.testclient import TestClient

from celeriac.platform.api.app import create_app
from celeriac.platform.dispatch import FairDispatcher
from celeriac.platform.queues import Pool, queue_for
from celeriac.platform.settings import Settings


def _publish(app: Celery, pool: Pool, band: str, tenant: str, count: int) -> None:
    queue = queue_for(pool, band, tenant)
    for i in range(count):
        app.send_task(f"celeriac.{pool.value}.noop", kwargs={"i": i}, queue=queue.name)


def test_demand_per_pool_sums_tenants_ready_queue_and_running(
    client: TestClient,
    api_settings: Settings,
    make_tenant: Callable[..., TenantFixture],
) -> None:
    acme, globex = make_tenant("acme"), make_tenant("globex")
    app = Celery("metrics-test", broker=api_settings.broker_url, set_as_current=False)
    _publish(app, Pool.COMPUTE, "high", acme.slug, 5)
    _publish(app, Pool.COMPUTE, "low", globex.slug, 3)
    _publish(app, Pool.DISTRIBUTION, "normal", acme.slug, 2)
    broker = redis.Redis.from_url(api_settings.broker_url)
    dispatcher = FairDispatcher(broker)
    # One live compute worker with 2 slots holding 1 task; one whose capacity expired.
    dispatcher.register_capacity(Pool.COMPUTE, "compute@pod-a", 2, busy=1)
    broker.zadd("celeriac:capacity:compute", {"compute@gone": 1.0})
    broker.hset("celeriac:busy:compute", "compute@gone", 7)
    dispatcher.release(Pool.COMPUTE, [queue_for(Pool.COMPUTE, "high", acme.slug),
                                      queue_for(Pool.COMPUTE, "low", globex.slug)])  # fmt: skip
    assert dispatcher.ready_depth(Pool.COMPUTE) == 1  # one free slot: one task released

    answer = client.get("/metrics/backlog")  # no credentials

    assert answer.status_code == 200, answer.text
    assert answer.json() == {
        "orchestration": {"queued": 0, "running": 0, "demand": 0},
        "distribution": {"queued": 2, "running": 0, "demand": 2},
        "compute": {"queued": 8, "running": 1, "demand": 9},
    }
    assert acme.slug not in answer.text and globex.slug not in answer.text
    broker.close()


def test_not_in_the_public_openapi_document(client: TestClient) -> None:
    assert not any(
        path.startswith("/metrics") for path in client.get("/openapi.json").json()["paths"]
    )


def test_without_a_redis_broker_the_backlog_is_unavailable_not_zero(
    api_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CELERIAC_BROKER_URL", "filesystem://")
    clear_process_caches()
    with TestClient(create_app()) as embedded:
        answer = embedded.get("/metrics/backlog")
    assert answer.status_code == 503
    assert answer.headers["content-type"] == "application/problem+json"
