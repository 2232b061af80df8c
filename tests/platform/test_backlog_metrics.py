"""The per-pool demand KEDA scales on: tenant backlogs plus ready queues plus the tasks
live workers hold, summed per pool, without tenant names, on the ops app only and behind
its bearer token, from at most one scan per cache interval."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis
from celery import Celery
from conftest import TenantFixture, clear_process_caches
from fastapi.testclient import TestClient

from celeriac.platform.dispatch import FairDispatcher
from celeriac.platform.ops.server import create_ops_app
from celeriac.platform.queues import Pool, queue_for
from celeriac.platform.settings import Settings, get_settings

TOKEN = "t" * 40
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def ops(api_settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Iterator[TestClient]:
    """The ops app (what the API's ops port serves), with a metrics token configured."""
    monkeypatch.setenv("CELERIAC_API__METRICS_TOKEN", TOKEN)
    clear_process_caches()
    with TestClient(create_ops_app(get_settings())) as test_client:
        yield test_client


def _publish(app: Celery, pool: Pool, band: str, tenant: str, count: int) -> None:
    queue = queue_for(pool, band, tenant)
    for i in range(count):
        app.send_task(f"celeriac.{pool.value}.noop", kwargs={"i": i}, queue=queue.name)


def test_demand_per_pool_sums_tenants_ready_queue_and_running(
    ops: TestClient,
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
    dispatcher.release(
        Pool.COMPUTE,
        [queue_for(Pool.COMPUTE, "high", acme.slug), queue_for(Pool.COMPUTE, "low", globex.slug)],
    )
    assert dispatcher.ready_depth(Pool.COMPUTE) == 1  # one free slot: one task released

    answer = ops.get("/metrics/backlog", headers=AUTH)

    assert answer.status_code == 200, answer.text
    assert answer.json() == {
        "orchestration": {"queued": 0, "running": 0, "demand": 0},
        "distribution": {"queued": 2, "running": 0, "demand": 2},
        "compute": {"queued": 8, "running": 1, "demand": 9},
    }
    assert acme.slug not in answer.text
    assert globex.slug not in answer.text
    broker.close()


def test_not_served_by_the_public_api(client: TestClient) -> None:
    assert not any(
        path.startswith("/metrics") for path in client.get("/openapi.json").json()["paths"]
    )
    assert client.get("/metrics/backlog", headers=AUTH).status_code == 404


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer " + "x" * 40}, {"Authorization": f"Basic {TOKEN}"}],
    ids=["none", "wrong-token", "not-bearer"],
)
def test_refused_without_the_token(ops: TestClient, headers: dict[str, str]) -> None:
    answer = ops.get("/metrics/backlog", headers=headers)
    assert answer.status_code == 401
    assert answer.headers["content-type"] == "application/problem+json"
    assert answer.headers["www-authenticate"].startswith("Bearer")
    assert "demand" not in answer.text


def test_concurrent_reads_share_one_scan(ops: TestClient, api_settings: Settings) -> None:
    app = Celery("metrics-test", broker=api_settings.broker_url, set_as_current=False)
    _publish(app, Pool.COMPUTE, "normal", "acme", 4)
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: ops.get("/metrics/backlog", headers=AUTH), range(16)))
    assert {a.json()["compute"]["queued"] for a in answers} == {4}
    cache = ops.app.state.demand_cache  # type: ignore[attr-defined]
    assert cache.max_age == api_settings.api.backlog_cache_seconds == 5.0
    # 16 reads within one interval (KEDA's three ScaledObjects and the HPA): one scan.
    assert cache.scans == 1
    _publish(app, Pool.COMPUTE, "normal", "acme", 1)
    assert ops.get("/metrics/backlog", headers=AUTH).json()["compute"]["queued"] == 4


def test_without_a_redis_broker_the_backlog_is_unavailable_not_zero(
    api_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CELERIAC_BROKER_URL", "filesystem://")
    monkeypatch.setenv("CELERIAC_API__METRICS_TOKEN", TOKEN)
    clear_process_caches()
    with TestClient(create_ops_app()) as embedded:
        answer = embedded.get("/metrics/backlog", headers=AUTH)
    assert answer.status_code == 503
    assert answer.headers["content-type"] == "application/problem+json"
    assert int(answer.headers["retry-after"]) > 0


def test_an_unreachable_broker_is_a_503_with_retry_after(
    api_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A port nothing listens on (the test Redis's port + 1 would be another agent's).
    monkeypatch.setenv("CELERIAC_BROKER_URL", "redis://127.0.0.1:1/0")
    monkeypatch.setenv("CELERIAC_API__METRICS_TOKEN", TOKEN)
    clear_process_caches()
    with TestClient(create_ops_app(), raise_server_exceptions=False) as unreachable:
        answer = unreachable.get("/metrics/backlog", headers=AUTH)
    assert answer.status_code == 503, answer.text
    assert int(answer.headers["retry-after"]) > 0
