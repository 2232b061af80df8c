"""Queue names encode pool, band and tenant, and parse back."""

from __future__ import annotations

import pytest

from celeriac.platform.models import Priority
from celeriac.platform.queues import Pool, parse_queue, queue_for, tenant_queues


def test_name_round_trips() -> None:
    queue = queue_for(Pool.COMPUTE, "high", "acme-corp")
    assert queue.name == "compute.high.acme-corp"
    assert parse_queue(queue.name) == queue


@pytest.mark.parametrize(
    "name",
    [
        "compute",
        "compute.high",
        "gpu.high.acme",
        "compute.urgent.acme",
        "compute.high.Acme",
        "compute.high.acme.extra",
        "celery",
    ],
)
def test_other_names_are_not_tenant_queues(name: str) -> None:
    assert parse_queue(name) is None


def test_bad_slug_cannot_make_a_queue() -> None:
    with pytest.raises(ValueError, match="slug"):
        queue_for(Pool.COMPUTE, Priority.LOW, "ACME.evil")


def test_tenant_queues_are_ordered_by_band() -> None:
    assert [q.band for q in tenant_queues(Pool.ORCHESTRATION, "acme")] == [
        Priority.HIGH,
        Priority.NORMAL,
        Priority.LOW,
    ]
