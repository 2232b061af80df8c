"""Flower against the platform's broker, as docs/operations/observability.md runs it: its
HTTP API lists the three pools' workers and a finished compute task."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import TenantFixture
from fastapi.testclient import TestClient

from celeriac.platform.queues import Pool

from observability_support import free_port
from worker_support import Workers, wait_for_job, wait_until

pytestmark = pytest.mark.slow


def test_flower_lists_the_pools_and_a_finished_task(
    client: TestClient,
    workers: Workers,
    worker_env: dict[str, str],
    var_dir: Path,
    make_tenant: Callable[..., TenantFixture],
) -> None:
    port = free_port()
    log = (var_dir / "flower.log").open("wb")
    flower = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "celeriac.workers.celery_app",
            "flower",
            "--address=127.0.0.1",
            f"--port={port}",
        ],
        env={**worker_env, "FLOWER_UNAUTHENTICATED_API": "true"},
        stdout=log,
        stderr=log,
    )
    base = f"http://127.0.0.1:{port}/api"
    try:

        def get(path: str) -> Any:
            try:
                answer = httpx.get(f"{base}{path}", timeout=10)
            except httpx.TransportError:
                return None
            return answer.json() if answer.status_code == 200 else None

        def pools() -> set[str]:
            listed = get("/workers?refresh=1") or {}
            return {name.split("@", 1)[0] for name in listed}

        wait_until(lambda: pools() >= {p.value for p in Pool}, 90, "Flower to list the pools")
        tenant = make_tenant("flowered")

        def a_finished_compute_task() -> list[dict[str, Any]]:
            # Flower turns task events on when it starts; a job run before they reached
            # the workers goes unseen, so each try runs another job.
            submitted = client.post(
                "/v1/jobs",
                headers=tenant.headers,
                json={
                    "pipeline": {
                        "datasets": [{"name": "tabular"}],
                        "analyzers": [{"name": "summary"}],
                    },
                    "records": [{"id": 1, "amount": 2.0}],
                },
            )
            assert submitted.status_code == 202, submitted.text
            assert wait_for_job(client, tenant.headers, submitted.json()["id"])["state"] == (
                "succeeded"
            )
            tasks = get("/tasks?taskname=celeriac.compute.run_task&state=SUCCESS") or {}
            return list(tasks.values())

        (task, *_) = wait_until(a_finished_compute_task, 120, "a finished task in Flower", 1)
        assert task["name"] == "celeriac.compute.run_task"
        assert task["worker"].startswith("compute@")
    finally:
        flower.terminate()
        flower.wait(timeout=30)
