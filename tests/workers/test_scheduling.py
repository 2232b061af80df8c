"""The scheduling contract with a real compute worker on real Redis: a tenant's backlog,
even of ``high`` work, does not hold up another tenant; tenants share the slots by their
plans' weights; within a tenant high runs before normal before low, and aging lets its low
work through a permanent flood of its own high work."""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from celery import Celery
from conftest import TenantFixture
from fastapi.testclient import TestClient

from celeriac.platform.cli import worker_argv
from celeriac.platform.dispatch import AGE_LIMIT
from celeriac.platform.queues import Pool
from celeriac.platform.settings import Settings
from celeriac.platform.tasks import Publication, Publisher, celery_config

from worker_support import Workers, wait_until

pytestmark = pytest.mark.slow


# The benches' no-op task (bench/noop.py): not in the product, so the worker loads it with
# ``--include``, as the queueing benches do.
NOOP = "celeriac.compute.noop"
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def compute_worker(
    worker_env: dict[str, str], var_dir: object, api_settings: Settings
) -> Iterator[Workers]:
    running = Workers(Path(str(var_dir)), worker_env)
    # What `celeriac worker --pool compute --concurrency 1` execs, plus the include.
    argv = [*worker_argv(api_settings, Pool.COMPUTE, 1), "--include", "bench.noop"]
    path = os.pathsep.join(filter(None, [str(REPO), worker_env.get("PYTHONPATH")]))
    running.start_argv("compute", argv, {**worker_env, "PYTHONPATH": path})
    try:
        wait_until(lambda: "ready." in running.log("compute"), 90, "the compute worker")
        yield running
    finally:
        running.stop_all()


def _started(workers: Workers) -> list[str]:
    labels = []
    for line in workers.log("compute").splitlines():
        if line.startswith("{") and '"noop started"' in line:
            labels.append(json.loads(line)["label"])
    return labels


def _noop(app: Celery, tenant: str, band: str, label: str, work_ms: int = 0) -> None:
    kwargs = {"label": label, "sent_at": time.time(), "work_ms": work_ms}
    Publisher(app).publish(Publication(NOOP, band, tenant, kwargs))


@pytest.fixture
def app(api_settings: Settings) -> Celery:
    client = Celery("scheduling-test", set_as_current=False)
    client.conf.update(celery_config(api_settings))
    return client


def test_a_backlog_of_one_tenant_does_not_hold_up_another(
    app: Celery, compute_worker: Workers
) -> None:
    for i in range(300):
        _noop(app, "noisy", "normal", f"noisy-{i}", work_ms=20)
    wait_until(lambda: len(_started(compute_worker)) >= 5, 60, "the backlog to start")
    already = len(_started(compute_worker))
    _noop(app, "quiet", "normal", "quiet")
    wait_until(lambda: "quiet" in _started(compute_worker), 60, "the quiet task")
    order = _started(compute_worker)
    # Started within a few task slots of being sent (the one running and the one or two
    # the worker had taken meanwhile), not after the rest of the 300-task backlog.
    overtaken_by = order.index("quiet") - already
    assert overtaken_by <= 3, order[already - 2 : already + 10]


def test_high_before_normal_before_low_within_a_tenant(
    app: Celery, compute_worker: Workers
) -> None:
    _noop(app, "acme", "normal", "blocker", work_ms=1500)  # occupies the only slot
    wait_until(lambda: "blocker" in _started(compute_worker), 60, "the blocker to start")
    for band in ("low", "normal", "high"):
        for i in range(2):
            _noop(app, "acme", band, f"{band}-{i}")
    wait_until(lambda: len(_started(compute_worker)) >= 7, 60, "every task to start")
    assert _started(compute_worker)[1:] == [
        "high-0",
        "high-1",
        "normal-0",
        "normal-1",
        "low-0",
        "low-1",
    ]


def test_a_tenant_flooding_high_does_not_hold_up_another_tenants_normal(
    app: Celery, compute_worker: Workers
) -> None:
    _flood(app, "noisy", "high", 300, work_ms=20)
    wait_until(lambda: len(_started(compute_worker)) >= 5, 60, "the flood to start")
    already = len(_started(compute_worker))
    _noop(app, "quiet", "normal", "quiet")
    wait_until(lambda: "quiet" in _started(compute_worker), 60, "the quiet task")
    order = _started(compute_worker)
    # The noisy tenant's high work is high only against its own: the quiet tenant's normal
    # task starts within a few task slots, not after the 300 high ones.
    overtaken_by = order.index("quiet") - already
    assert overtaken_by <= 3, order[already - 2 : already + 10]


def test_plans_weights_share_the_slots(
    app: Celery,
    compute_worker: Workers,
    client: TestClient,
    make_tenant: Callable[..., TenantFixture],
    admin_headers: dict[str, str],
) -> None:
    plans = {"free": 1, "pro": 2, "enterprise": 4}
    for plan in plans:
        tenant = make_tenant(f"plan-{plan}")
        if plan != "free":
            changed = client.patch(
                f"/v1/admin/tenants/{tenant.id}", json={"plan": plan}, headers=admin_headers
            )
            assert changed.status_code == 200, changed.text
    per_tenant = 1000
    Publisher(app).publish_many(
        [
            Publication(
                NOOP,
                "normal",
                f"plan-{plan}",
                {"label": f"{plan}-{i}", "sent_at": time.time()},
            )
            for i in range(per_tenant)
            for plan in plans
        ]
    )
    # Every tenant has a backlog until enterprise's runs out, after 1,750 starts.
    window = 1700
    wait_until(lambda: len(_started(compute_worker)) >= window, 180, "the backlogs to run")
    shares = Counter(label.split("-")[0] for label in _started(compute_worker)[:window])
    total_weight = sum(plans.values())
    for plan, weight in plans.items():
        expected = window * weight / total_weight
        assert abs(shares[plan] - expected) <= 0.1 * expected, shares


def test_aging_lets_low_through_a_permanent_high_flood_of_its_tenant(
    app: Celery, compute_worker: Workers
) -> None:
    _flood(app, "acme", "high", 400, work_ms=5)
    wait_until(lambda: len(_started(compute_worker)) >= 5, 60, "the flood to start")
    already = len(_started(compute_worker))
    _noop(app, "acme", "low", "low")
    wait_until(lambda: "low" in _started(compute_worker), 60, "the low task")
    order = _started(compute_worker)
    # Behind at most AGE_LIMIT of its tenant's high tasks (plus those already taken), while
    # hundreds of them are still queued.
    assert order.index("low") - already <= AGE_LIMIT + 3, order[already:]
    assert len(order) < 100


def _flood(app: Celery, tenant: str, band: str, count: int, work_ms: int) -> None:
    Publisher(app).publish_many(
        [
            Publication(
                NOOP,
                band,
                tenant,
                {"label": f"{tenant}-{band}-{i}", "sent_at": time.time(), "work_ms": work_ms},
            )
            for i in range(count)
        ]
    )
