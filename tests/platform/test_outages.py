"""A service that is down is a 503 with Retry-After, never a 500: PostgreSQL or Redis cut
(connections reset, new ones refused) under a live API, through a loopback relay."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from conftest import clear_process_caches
from fastapi.testclient import TestClient
from fault_support import Relay, relay_to
from httpx import Response

from celeriac.platform.api.app import create_app
from celeriac.platform.auth.jwt import Role, mint_token
from celeriac.platform.db import get_engine, get_sessionmaker
from celeriac.platform.jobs.pipelines import ANALYZER, DATASET, PluginInfo, register_plugins
from celeriac.platform.settings import Settings, get_settings

from worker_support import wait_until

JOB = {
    "pipeline": {"datasets": [{"name": "tabular"}], "analyzers": [{"name": "summary"}]},
    "records": [{"id": 1, "amount": 2.5}],
}


@pytest.fixture
def relays(api_settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Relay]]:
    """The API's database, broker and cache, each behind a relay of its own."""
    with (
        relay_to(api_settings.database_url) as pg,
        relay_to(str(api_settings.broker_url)) as broker,
        relay_to(str(api_settings.redis_url)) as cache,
    ):
        monkeypatch.setenv("CELERIAC_DATABASE_URL", pg.url_for(api_settings.database_url))
        monkeypatch.setenv("CELERIAC_BROKER_URL", broker.url_for(str(api_settings.broker_url)))
        monkeypatch.setenv("CELERIAC_REDIS_URL", cache.url_for(str(api_settings.redis_url)))
        get_engine().dispose()
        clear_process_caches()
        with get_sessionmaker().begin() as session:
            register_plugins(
                session,
                [
                    PluginInfo(DATASET, "tabular", "1.0", {"type": "object"}, produces="table"),
                    PluginInfo(ANALYZER, "summary", "1.0", {"type": "object"}, accepts=("table",)),
                ],
            )
        yield {"pg": pg, "broker": broker, "cache": cache}
        get_engine().dispose()


@pytest.fixture
def live(relays: dict[str, Relay]) -> Iterator[tuple[TestClient, dict[str, str]]]:
    """An API on the relayed services and a tenant key."""
    settings = get_settings()
    admin = {"Authorization": f"Bearer {mint_token(settings, 'ops@test', Role.ADMIN)}"}
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        tenant = client.post(
            "/v1/admin/tenants", json={"slug": "outage", "name": "o"}, headers=admin
        )
        assert tenant.status_code == 201, tenant.text
        key = client.post(
            f"/v1/admin/tenants/{tenant.json()['id']}/keys",
            json={"scopes": ["jobs:write", "jobs:read"]},
            headers=admin,
        )
        assert key.status_code == 201, key.text
        yield client, {"Authorization": f"Bearer {key.json()['key']}"}


def _assert_unavailable(answer: object) -> None:
    assert isinstance(answer, Response)
    assert answer.status_code == 503, answer.text
    assert answer.headers["content-type"] == "application/problem+json"
    assert int(answer.headers["Retry-After"]) >= 1
    assert answer.json()["code"] == "service-unavailable"


def test_get_job_with_postgresql_down_is_503_then_recovers(
    live: tuple[TestClient, dict[str, str]], relays: dict[str, Relay]
) -> None:
    client, headers = live
    job = client.post("/v1/jobs", json=JOB, headers=headers)
    assert job.status_code == 202, job.text
    url = f"/v1/jobs/{job.json()['id']}"
    relays["pg"].cut()
    _assert_unavailable(client.get(url, headers=headers))
    _assert_unavailable(client.get("/v1/jobs", headers=headers))
    relays["pg"].restore()
    wait_until(
        lambda: client.get(url, headers=headers).status_code == 200,
        timeout=30,
        what="the job readable again after PostgreSQL came back",
    )


def test_submit_with_redis_hung_is_503_then_recovers(
    live: tuple[TestClient, dict[str, str]], relays: dict[str, Relay]
) -> None:
    client, headers = live
    relays["broker"].stall()
    relays["cache"].stall()
    _assert_unavailable(client.post("/v1/jobs", json=JOB, headers=headers))
    _assert_unavailable(client.get("/v1/jobs", headers=headers))
    relays["broker"].restore()
    relays["cache"].restore()
    wait_until(
        lambda: client.post("/v1/jobs", json=JOB, headers=headers).status_code == 202,
        timeout=30,
        what="submissions accepted again after Redis came back",
    )


def test_submit_with_redis_refusing_is_503_then_recovers(
    live: tuple[TestClient, dict[str, str]], relays: dict[str, Relay]
) -> None:
    client, headers = live
    relays["broker"].cut()
    relays["cache"].cut()
    _assert_unavailable(client.post("/v1/jobs", json=JOB, headers=headers))
    relays["broker"].restore()
    relays["cache"].restore()
    wait_until(
        lambda: client.post("/v1/jobs", json=JOB, headers=headers).status_code == 202,
        timeout=30,
        what="submissions accepted again after Redis came back",
    )
