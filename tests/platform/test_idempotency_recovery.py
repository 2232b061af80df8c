"""An API that dies between storing a job and storing the idempotent answer leaves the
Idempotency-Key ``in_flight``: after the lease, a retry gets the job it created (not a 409
for 24 hours, not a second job); a reservation whose job was never stored is taken over."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import timedelta

import pytest
from conftest import TenantFixture
from fastapi.testclient import TestClient
from sqlalchemy import func, select, update

from celeriac.platform.db import get_sessionmaker
from celeriac.platform.jobs.pipelines import ANALYZER, DATASET, PluginInfo, register_plugins
from celeriac.platform.models import IdempotencyKey, IdempotencyState, Job, utcnow
from celeriac.platform.settings import Settings

JOB = {
    "pipeline": {"datasets": [{"name": "tabular"}], "analyzers": [{"name": "summary"}]},
    "records": [{"id": 1, "amount": 2.5}],
}


@pytest.fixture(autouse=True)
def _registry(api_settings: Settings) -> None:
    with get_sessionmaker().begin() as session:
        register_plugins(
            session,
            [
                PluginInfo(DATASET, "tabular", "1.0", {"type": "object"}, produces="table"),
                PluginInfo(ANALYZER, "summary", "1.0", {"type": "object"}, accepts=("table",)),
            ],
        )


def _jobs() -> list[uuid.UUID]:
    with get_sessionmaker()() as session:
        return list(session.scalars(select(Job.id).order_by(Job.created_at)))


def _as_a_dead_api_left_it(key: str, *, age: timedelta, new_id: bool = False) -> uuid.UUID:
    """The reservation as an API killed before it stored its answer leaves it: in flight,
    no answer, created ``age`` ago (``new_id``: the job was never stored either)."""
    with get_sessionmaker().begin() as session:
        row = session.scalars(select(IdempotencyKey).where(IdempotencyKey.key == key)).one()
        values = {
            "state": IdempotencyState.IN_FLIGHT,
            "response_status": None,
            "response_headers": None,
            "response_body": None,
            "created_at": utcnow() - age,
        }
        if new_id:
            values["id"] = uuid.uuid4()
        session.execute(update(IdempotencyKey).where(IdempotencyKey.id == row.id).values(values))
        return uuid.UUID(str(values.get("id", row.id)))


def test_a_retry_after_the_api_died_gets_the_job_it_created(
    client: TestClient, make_tenant: Callable[..., TenantFixture], api_settings: Settings
) -> None:
    tenant = make_tenant()
    headers = tenant.headers | {"Idempotency-Key": "died-after-commit"}
    first = client.post("/v1/jobs", json=JOB, headers=headers)
    assert first.status_code == 202, first.text
    lease = timedelta(seconds=api_settings.api.idempotency_lease_seconds)

    _as_a_dead_api_left_it("died-after-commit", age=lease / 2)
    busy = client.post("/v1/jobs", json=JOB, headers=headers)  # may still be running
    assert busy.status_code == 409
    assert busy.headers["Retry-After"] == "1"

    _as_a_dead_api_left_it("died-after-commit", age=lease + timedelta(seconds=1))
    retried = client.post("/v1/jobs", json=JOB, headers=headers)
    assert retried.status_code == 202, retried.text
    assert retried.headers["Idempotent-Replayed"] == "true"
    assert retried.json()["id"] == first.json()["id"]
    assert retried.headers["Location"] == f"/v1/jobs/{first.json()['id']}"
    assert _jobs() == [uuid.UUID(first.json()["id"])]
    again = client.post("/v1/jobs", json=JOB, headers=headers)  # completed now: a replay
    assert again.status_code == 202
    assert again.json()["id"] == first.json()["id"]


def test_a_retry_takes_over_a_reservation_whose_job_was_never_stored(
    client: TestClient, make_tenant: Callable[..., TenantFixture], api_settings: Settings
) -> None:
    tenant = make_tenant()
    headers = tenant.headers | {"Idempotency-Key": "died-before-commit"}
    assert client.post("/v1/jobs", json=JOB, headers=headers).status_code == 202
    lease = timedelta(seconds=api_settings.api.idempotency_lease_seconds)
    reservation = _as_a_dead_api_left_it(
        "died-before-commit", age=lease + timedelta(seconds=1), new_id=True
    )
    retried = client.post("/v1/jobs", json=JOB, headers=headers)
    assert retried.status_code == 202, retried.text
    assert "Idempotent-Replayed" not in retried.headers
    assert retried.json()["id"] == str(reservation)  # stored under the reservation's id
    replayed = client.post("/v1/jobs", json=JOB, headers=headers)
    assert replayed.headers["Idempotent-Replayed"] == "true"
    assert replayed.json()["id"] == str(reservation)
    with get_sessionmaker()() as session:
        assert session.scalar(select(func.count()).select_from(IdempotencyKey)) == 1
    assert len(_jobs()) == 2  # the setup's job and the retried one, nothing more
