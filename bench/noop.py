"""The benchmarks' no-op task, loaded only by the workers that run them (``--include
bench.noop``, with the repository root on PYTHONPATH); the product does not ship it.

Its name is in the compute pool's namespace, so that Celery's glob routes it (and the fair
publisher sends it through a tenant's queue) like any compute task: the queueing benches
(bench.tenants, bench.fairness) and the scheduling tests (tests/workers/test_scheduling.py)
measure the dispatch layer with it. It logs the delay from ``sent_at`` (the publisher's
``time.time()``) to its start, as the line ``noop started``, then sleeps ``work_ms`` (a
stand-in for a task's work).
"""

from __future__ import annotations

import logging
import time

from celery import shared_task

NOOP = "celeriac.compute.noop"

logger = logging.getLogger(__name__)


@shared_task(name=NOOP, ignore_result=True)
def noop_compute(
    tenant_id: str | None = None,  # noqa: ARG001 - the Publisher sends every task its tenant_id
    label: str | None = None,
    sent_at: float = 0.0,
    work_ms: int = 0,
) -> None:
    """Log the delay from ``sent_at`` to this start, then sleep ``work_ms``."""
    if sent_at:
        delay_ms = (time.time() - sent_at) * 1000
        logger.info("noop started", extra={"label": label, "delay_ms": delay_ms})
    if work_ms:
        time.sleep(work_ms / 1000)
