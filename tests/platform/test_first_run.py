"""The first minutes of a platform: before any compute worker has published its plugins,
a job is refused as "not ready yet" (503, Retry-After), not as the client's mistake (422),
and it is accepted as soon as the plugins are published."""

from __future__ import annotations

from collections.abc import Callable

from conftest import TenantFixture
from fastapi.testclient import TestClient

from celeriac.platform.db import get_sessionmaker
from celeriac.platform.jobs.pipelines import ANALYZER, DATASET, PluginInfo, register_plugins

JOB = {"pipeline": "tabular-summary", "records": [{"id": 1, "amount": 9.5}]}


def test_jobs_wait_for_the_first_published_registry(
    client: TestClient, make_tenant: Callable[..., TenantFixture]
) -> None:
    tenant = make_tenant()
    early = client.post("/v1/jobs", json=JOB, headers=tenant.headers)
    assert early.status_code == 503, early.text
    assert early.headers["content-type"] == "application/problem+json"
    assert int(early.headers["Retry-After"]) >= 1
    assert "no compute worker has published" in early.json()["detail"]
    with get_sessionmaker().begin() as session:
        register_plugins(
            session,
            [
                PluginInfo(DATASET, "tabular", "1.0", {"type": "object"}, produces="table"),
                PluginInfo(ANALYZER, "summary", "1.0", {"type": "object"}, accepts=("table",)),
                PluginInfo(ANALYZER, "anomalies", "1.0", {"type": "object"}, accepts=("table",)),
            ],
        )
    # at once: an empty registry is not kept for the process cache's TTL
    accepted = client.post("/v1/jobs", json=JOB, headers=tenant.headers)
    assert accepted.status_code == 202, accepted.text
