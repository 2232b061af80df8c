"""The scheduling contract with a real compute worker on real Redis: a tenant's backlog
does not hold up another tenant, and within a tenant high runs before normal before low."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest
from celery import Celery

from celeriac.platform.queues import Pool, TaskName
from celeriac.platform.settings import Settings
from celeriac.platform.tasks import Publication, Publisher, celery_config

from worker_support import Workers, wait_until

pytestmark = pytest.mark.slow


@pytest.fixture
def compute_worker(worker_env: dict[str, str], var_dir: object) -> Iterator[Workers]:
    from pathlib import Path

    running = Workers(Path(str(var_dir)), worker_env)
    running.start("compute", "worker", "--pool", Pool.COMPUTE.value, "--concurrency", "1")
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
    Publisher(app).publish(Publication(TaskName.NOOP, band, tenant, kwargs))


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
