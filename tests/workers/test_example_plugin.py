"""A plugin from a separate distribution (tests/plugins/celeriac-example-plugin), installed
with pip, is discovered through its entry point and runs on a dataset, and through a job
on real workers: no core code names it. ``test_plugins_path`` (conftest.py) is the folder
pip installed it into; the ``workers`` fixture puts it on the workers' ``PYTHONPATH``."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from conftest import TenantFixture
from fastapi.testclient import TestClient
from sqlalchemy import select

from celeriac.platform.db import get_engine
from celeriac.platform.jobs.pipelines import ANALYZER
from celeriac.platform.models import JobTask
from celeriac.workers.compute import analyze_dataset, build_dataset, discover

from worker_support import Workers, wait_for_job

SAMPLE = Path(__file__).resolve().parent.parent / "data" / "sample_1000.ndjson"


@pytest.fixture
def installed_here(test_plugins_path: Path) -> Iterator[Path]:
    """The installed test plugins visible to this process for one test."""
    sys.path.insert(0, str(test_plugins_path))
    importlib.invalidate_caches()
    try:
        yield test_plugins_path
    finally:
        sys.path.remove(str(test_plugins_path))
        for name in [m for m in sys.modules if m.startswith("celeriac_example_plugin")]:
            del sys.modules[name]
        importlib.invalidate_caches()


def _records() -> list[dict[str, Any]]:
    return [json.loads(line) for line in SAMPLE.read_text(encoding="utf-8").splitlines()]


def _expected_groups(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    counts = pd.json_normalize(records)["customer.segment"].value_counts()
    return [
        {"value": value, "rows": int(rows)}
        for value, rows in sorted(counts.items(), key=lambda p: (-p[1], p[0]))
    ]


def test_the_installed_plugin_is_discovered_and_runs(installed_here: Path) -> None:
    registry = discover()
    row_count = registry.analyzer("row_count")
    assert registry.sources[(ANALYZER, "row_count")] == "celeriac-example-plugin 0.1.0"
    assert type(row_count).__module__ == "celeriac_example_plugin"
    info = next(i for i in registry.plugin_infos() if i.name == "row_count")
    assert info.accepts == ("table", "text", "timeseries")
    assert info.parameters_schema["properties"]["by"]["anyOf"][0] == {"type": "string"}

    records = _records()
    table = build_dataset("tabular", [records[:500], records[500:]], registry=registry)
    result = analyze_dataset(
        "row_count", table, {"by": "customer.segment"}, kind="table", registry=registry
    )
    assert result == {"rows": 1000, "groups": _expected_groups(records)}


def test_a_fresh_process_finds_it_through_its_path_alone(test_plugins_path: Path) -> None:
    # How a compute worker sees it: installed where its interpreter looks, nothing else.
    # (Without the built-ins, unless pyproject.toml declares them, to keep this quick.)
    code = (
        "import json\n"
        "import pandas as pd\n"
        "from celeriac.workers.compute import analyze_dataset, discover\n"
        "registry = discover(builtins=False)\n"
        "frame = pd.DataFrame({'city': ['Lyon', 'Porto', 'Lyon']})\n"
        "print(json.dumps(registry.sources[('analyzer', 'row_count')]))\n"
        "print(json.dumps(analyze_dataset('row_count', frame, {'by': 'city'}, kind='table',\n"
        "                                 registry=registry)))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(test_plugins_path)}
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=False,
        env=env,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    source, counted = (json.loads(line) for line in result.stdout.splitlines())
    assert source == "celeriac-example-plugin 0.1.0"
    assert counted == {
        "rows": 3,
        "groups": [{"value": "Lyon", "rows": 2}, {"value": "Porto", "rows": 1}],
    }


@pytest.mark.slow
def test_a_job_names_the_installed_plugin_and_real_workers_run_it(
    client: TestClient, workers: Workers, make_tenant: Callable[..., TenantFixture]
) -> None:
    # The compute pool found the plugin on its path and published it; the API accepts a
    # pipeline naming it, and the result document carries its numbers.
    tenant = make_tenant()
    records = _records()
    submitted = client.post(
        "/v1/jobs",
        headers=tenant.headers,
        json={
            "pipeline": {
                "datasets": [{"name": "tabular"}],
                "analyzers": [
                    {"name": "row_count", "params": {"by": "customer.segment"}},
                    {"name": "summary"},
                ],
            },
            "records": records,
        },
    )
    assert submitted.status_code == 202, submitted.text
    job = wait_for_job(client, tenant.headers, submitted.json()["id"])
    assert job["state"] == "succeeded", (job, workers.log("compute")[-3000:])

    results = client.get(f"/v1/jobs/{job['id']}/results", headers=tenant.headers).json()
    assert results["analyses"]["row_count"]["tabular"] == {
        "rows": len(records),
        "groups": _expected_groups(records),
    }
    with get_engine().connect() as conn:
        ran = conn.execute(
            select(JobTask.plugin_version, JobTask.state).where(JobTask.plugin == "row_count")
        ).one()
    assert (ran.plugin_version, ran.state.value) == ("0.1.0", "succeeded")
