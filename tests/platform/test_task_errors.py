"""A failed task's error keeps record text out of the database: the clear column holds the
exception's class and a fixed sentence; the message is encrypted under the tenant's key
and shown, decrypted, to the tenant in GET /v1/jobs/{id}."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import pytest
from conftest import TenantFixture
from fastapi.testclient import TestClient
from sqlalchemy import text

from celeriac.platform.db import get_engine, get_sessionmaker
from celeriac.platform.jobs import task_errors
from celeriac.platform.jobs.pipelines import ANALYZER, DATASET, PluginInfo, register_plugins
from celeriac.platform.models import JobStage, JobTask, TaskState
from celeriac.platform.settings import Settings

MARKER = "zqxMARKERerrorValue41"
JOB = {
    "pipeline": {"datasets": [{"name": "tabular"}], "analyzers": [{"name": "summary"}]},
    "records": [{"id": 1, "amount": MARKER}],
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


def _failed_task(tenant_id: str, job_id: str, exc: BaseException) -> None:
    """A failed task as the worker records it: through task_errors.seal_exception."""
    task_id = uuid.uuid4()
    sealed = task_errors.seal_exception(tenant_id, str(task_id), exc)
    with get_sessionmaker().begin() as session:
        session.add(
            JobTask(
                id=task_id,
                tenant_id=uuid.UUID(tenant_id),
                job_id=uuid.UUID(job_id),
                task_key="analysis/summary/tabular",
                stage=JobStage.ANALYSIS,
                plugin="summary",
                chunk=None,
                input_key="in/",
                state=TaskState.FAILED,
                attempts=1,
                error=sealed.clear,
                error_detail=sealed.detail,
            )
        )


def test_error_details_are_encrypted_and_shown_to_the_tenant(
    client: TestClient, make_tenant: Callable[..., TenantFixture]
) -> None:
    tenant, other = make_tenant(), make_tenant()
    job = client.post("/v1/jobs", json=JOB, headers=tenant.headers).json()
    failure = ValueError(f"could not convert string to float: '{MARKER}'")
    _failed_task(tenant.id, job["id"], failure)

    with get_engine().connect() as conn:
        row = conn.execute(text("SELECT error, error_detail FROM job_tasks")).one()
    assert row.error.startswith("ValueError: the task failed")
    assert MARKER not in row.error
    assert MARKER.encode() not in bytes(row.error_detail)

    shown = client.get(f"/v1/jobs/{job['id']}", headers=tenant.headers).json()["errors"]
    assert shown == [
        {
            "stage": "analysis",
            "plugin": "summary",
            "chunk": None,
            "state": "failed",
            "attempts": 1,
            "error": f"ValueError: {failure}",
        }
    ]
    assert client.get(f"/v1/jobs/{job['id']}", headers=other.headers).status_code == 404
    # the clear part is a class name or "Error", never free text
    odd = task_errors.seal(tenant.id, str(uuid.uuid4()), f"not a class '{MARKER}'", "x")
    assert odd.clear.startswith("Error: ")
    assert MARKER not in odd.clear
