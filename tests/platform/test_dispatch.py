"""Fair dispatch on the real Redis broker: tenants first (weighted round-robin), then the
tenant's highest band (with aging), only as deep as the pool's live slots, suspended
tenants held back, lost ring entries and weights repaired, no state kept for idle
tenants."""

from __future__ import annotations

import base64
import json
from collections import Counter
from collections.abc import Iterator

import pytest
import redis
from celery import Celery
from fastapi.testclient import TestClient

from celeriac.platform.dispatch import AGE_LIMIT, FairDispatcher
from celeriac.platform.models import Priority
from celeriac.platform.queues import Pool, queue_for

Broker = tuple[Celery, FairDispatcher, redis.Redis]


@pytest.fixture
def broker(redis_broker_url: str) -> Iterator[Broker]:
    app = Celery("dispatch-test", broker=redis_broker_url, set_as_current=False)
    app.conf.task_serializer = "json"
    client = redis.Redis.from_url(redis_broker_url)
    yield app, FairDispatcher(client), client
    client.close()


def _publish(app: Celery, tenant: str, band: str, label: str, pool: Pool = Pool.COMPUTE) -> None:
    queue = queue_for(pool, band, tenant)
    app.send_task("celeriac.compute.noop", kwargs={"label": label}, queue=queue.name)


def _take(client: redis.Redis, pool: Pool = Pool.COMPUTE) -> str | None:
    raw = client.rpop(pool.value)
    if raw is None:
        return None
    _, kwargs, _ = json.loads(base64.b64decode(json.loads(raw)["body"]))
    return str(kwargs["label"])


def _drain(client: redis.Redis, dispatcher: FairDispatcher, pool: Pool = Pool.COMPUTE) -> list[str]:
    """Act as a worker: take one ready task, let the dispatcher top up, repeat."""
    taken = []
    while (label := _take(client, pool)) is not None:
        taken.append(label)
        dispatcher.release(pool)
    return taken


def test_a_backlog_does_not_hold_up_another_tenant(broker: Broker) -> None:
    app, dispatcher, client = broker
    noisy = queue_for(Pool.COMPUTE, "normal", "noisy")
    for i in range(2000):
        _publish(app, "noisy", "normal", f"noisy-{i}")
    dispatcher.register_capacity(Pool.COMPUTE, "worker-1", 4)
    dispatcher.release(Pool.COMPUTE, [noisy])
    assert dispatcher.ready_depth(Pool.COMPUTE) == 4  # as deep as the live slots, no deeper

    _publish(app, "quiet", "normal", "quiet-0")
    dispatcher.release(Pool.COMPUTE, [queue_for(Pool.COMPUTE, "normal", "quiet")])
    order = _drain(client, dispatcher)
    assert order.index("quiet-0") <= 5  # behind at most the ready queue plus one round
    assert [x for x in order if x.startswith("noisy")] == [f"noisy-{i}" for i in range(2000)]


def test_high_band_before_normal_before_low(broker: Broker) -> None:
    app, dispatcher, client = broker
    for band in ("low", "normal", "high"):
        for i in range(3):
            _publish(app, "acme", band, f"{band}-{i}")
    dispatcher.release(
        Pool.COMPUTE, [queue_for(Pool.COMPUTE, b, "acme") for b in ("low", "normal", "high")]
    )
    assert _drain(client, dispatcher) == [
        "high-0",
        "high-1",
        "high-2",
        "normal-0",
        "normal-1",
        "normal-2",
        "low-0",
        "low-1",
        "low-2",
    ]


def test_a_tenant_flooding_high_does_not_hold_up_another_tenants_normal(broker: Broker) -> None:
    app, dispatcher, client = broker
    for i in range(2000):
        _publish(app, "noisy", "high", f"noisy-{i}")
    dispatcher.register_capacity(Pool.COMPUTE, "worker-1", 4)
    dispatcher.release(Pool.COMPUTE, [queue_for(Pool.COMPUTE, "high", "noisy")])
    for band in ("normal", "low"):
        _publish(app, "quiet", band, f"quiet-{band}")
    dispatcher.release(
        Pool.COMPUTE, [queue_for(Pool.COMPUTE, b, "quiet") for b in ("normal", "low")]
    )
    order = _drain(client, dispatcher)
    # Behind the 4 already released; then the quiet tenant's turns alternate with the
    # noisy one's: its normal first (its own highest band), its low one turn later.
    assert order.index("quiet-normal") == 4
    assert order.index("quiet-low") == 6


def test_weights_share_the_slots(broker: Broker) -> None:
    app, dispatcher, client = broker
    weights = {"free": 1, "pro": 2, "ent": 4}
    for tenant, weight in weights.items():
        dispatcher.set_weight(tenant, weight)
        for i in range(1000):
            _publish(app, tenant, "normal", f"{tenant}-{i}")
    dispatcher.release(Pool.COMPUTE, [queue_for(Pool.COMPUTE, "normal", t) for t in weights])
    order = _drain(client, dispatcher)
    # While all three have a backlog (the first 1,750 tasks: 1,000 of ent's), exactly
    # 1:2:4, turn by turn.
    shares = Counter(label.split("-")[0] for label in order[:1750])
    assert shares == {"free": 250, "pro": 500, "ent": 1000}
    assert order[:7] == ["free-0", "pro-0", "pro-1", "ent-0", "ent-1", "ent-2", "ent-3"]


def test_a_weight_change_applies_from_the_next_turn(broker: Broker) -> None:
    app, dispatcher, client = broker
    for tenant in ("aaa", "bbb"):
        for i in range(20):
            _publish(app, tenant, "normal", f"{tenant}-{i}")
    dispatcher.release(Pool.COMPUTE, [queue_for(Pool.COMPUTE, "normal", t) for t in ("aaa", "bbb")])
    first = [_take(client) for _ in range(1)]
    dispatcher.set_weight("bbb", 3)
    dispatcher.release(Pool.COMPUTE)
    order = first + _drain(client, dispatcher)
    assert order[:6] == ["aaa-0", "bbb-0", "bbb-1", "bbb-2", "aaa-1", "bbb-3"]


def test_sync_weights_repairs_a_lost_hash(broker: Broker) -> None:
    _, dispatcher, client = broker
    dispatcher.set_weight("gone", 3)
    client.delete("celeriac:weights")  # a Redis restart
    assert dispatcher.sync_weights({"pro": 2, "ent": 4, "free": 1}) == 2
    assert dispatcher.weights() == {"pro": 2, "ent": 4}
    assert dispatcher.sync_weights({"pro": 2}) == 1
    assert dispatcher.weights() == {"pro": 2}
    assert dispatcher.sync_weights({"pro": 2}) == 0


def test_aging_releases_low_under_a_permanent_high_flood_of_its_tenant(broker: Broker) -> None:
    app, dispatcher, client = broker
    _publish(app, "acme", "low", "low-0")
    _publish(app, "acme", "normal", "normal-0")
    dispatcher.release(Pool.COMPUTE)
    queues = [queue_for(Pool.COMPUTE, b, "acme") for b in ("high", "normal", "low")]
    order: list[str] = []
    for i in range(3 * AGE_LIMIT):
        # The flood never ends: a new high task arrives for every one that goes.
        _publish(app, "acme", "high", f"high-{i}")
        dispatcher.release(Pool.COMPUTE, queues)
        order.append(_take(client) or "")
    assert order.index("low-0") <= AGE_LIMIT + 1
    assert order.index("normal-0") <= AGE_LIMIT + 2
    assert sum(label.startswith("high") for label in order) >= 3 * AGE_LIMIT - 2


def test_idle_tenants_leave_no_state(broker: Broker) -> None:
    app, dispatcher, client = broker
    for tenant in ("aaa", "bbb"):
        for band in ("high", "normal", "low"):
            for i in range(AGE_LIMIT):
                _publish(app, tenant, band, f"{tenant}-{band}-{i}")
    dispatcher.set_weight("bbb", 2)
    dispatcher.release(
        Pool.COMPUTE,
        [queue_for(Pool.COMPUTE, b, t) for t in ("aaa", "bbb") for b in ("high", "normal", "low")],
    )
    assert len(_drain(client, dispatcher)) == 6 * AGE_LIMIT
    dispatcher.release(Pool.COMPUTE)
    left = {key.decode() for key in client.scan_iter(match="celeriac:fair-*")}
    assert left == set()
    assert dispatcher.weights() == {"bbb": 2}  # the configuration stays


def test_round_robin_across_tenants_within_a_band(broker: Broker) -> None:
    app, dispatcher, client = broker
    for tenant in ("aaa", "bbb", "ccc"):
        for i in range(3):
            _publish(app, tenant, "normal", f"{tenant}-{i}")
    dispatcher.release(
        Pool.COMPUTE, [queue_for(Pool.COMPUTE, "normal", t) for t in ("aaa", "bbb", "ccc")]
    )
    assert _drain(client, dispatcher) == [
        f"{t}-{i}" for i in range(3) for t in ("aaa", "bbb", "ccc")
    ]


def test_expired_capacity_stops_counting(broker: Broker) -> None:
    app, dispatcher, client = broker
    for i in range(20):
        _publish(app, "acme", "normal", f"t-{i}")
    client.zadd("celeriac:capacity:compute", {"gone": 1.0})  # expired long ago
    client.hset("celeriac:slots:compute", "gone", 16)
    dispatcher.release(Pool.COMPUTE, [queue_for(Pool.COMPUTE, "normal", "acme")])
    assert dispatcher.ready_depth(Pool.COMPUTE) == 1  # min depth: no live slots


def test_suspended_tenants_are_held_back(broker: Broker) -> None:
    app, dispatcher, client = broker
    _publish(app, "paused", "normal", "paused-0")
    dispatcher.set_suspended("paused", True)
    dispatcher.release(Pool.COMPUTE, [queue_for(Pool.COMPUTE, "normal", "paused")])
    assert dispatcher.ready_depth(Pool.COMPUTE) == 0
    dispatcher.set_suspended("paused", False)
    assert dispatcher.reconcile() == 1
    assert _take(client) == "paused-0"


def test_reconcile_finds_backlogs_whose_ring_entry_was_lost(broker: Broker) -> None:
    app, dispatcher, client = broker
    for pool in (Pool.ORCHESTRATION, Pool.COMPUTE):
        _publish(app, "acme", "high", f"{pool.value}-0", pool=pool)
    # Published, but nobody told the dispatcher (the publisher crashed in between).
    assert dispatcher.release(Pool.COMPUTE) == 0
    backlogs = dispatcher.tenant_backlogs()
    assert backlogs == {
        queue_for(Pool.ORCHESTRATION, Priority.HIGH, "acme"): 1,
        queue_for(Pool.COMPUTE, Priority.HIGH, "acme"): 1,
    }
    assert dispatcher.reconcile() == 2
    assert _take(client, Pool.COMPUTE) == "compute-0"
    assert _take(client, Pool.ORCHESTRATION) == "orchestration-0"


def test_admin_backlog_view(broker: tuple, client: object, admin_headers: dict[str, str]) -> None:
    assert isinstance(client, TestClient)
    app, dispatcher, _ = broker
    for i in range(3):
        _publish(app, "acme", "low", f"low-{i}")
    dispatcher.register_capacity(Pool.COMPUTE, "worker-1", 1)
    dispatcher.release(Pool.COMPUTE, [queue_for(Pool.COMPUTE, "low", "acme")])
    view = client.get("/v1/admin/backlog", headers=admin_headers).json()
    assert view["fair_dispatch"] is True
    assert view["ready"]["compute"] == 1
    assert view["tenants"] == [
        {
            "queue": "compute.low.acme",
            "pool": "compute",
            "band": "low",
            "tenant": "acme",
            "messages": 2,
        }
    ]
