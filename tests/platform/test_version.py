"""The version is written once, in pyproject.toml; the command, the API and the chart show it."""

from __future__ import annotations

import tomllib
from pathlib import Path

import yaml
from fastapi.testclient import TestClient

from support import run_celeriac

REPO = Path(__file__).resolve().parents[2]


def _pyproject_version() -> str:
    version: str = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    return version


def test_celeriac_version_prints_the_pyproject_version(var_dir: Path) -> None:
    result = run_celeriac(var_dir, "--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"celeriac {_pyproject_version()}"


def test_the_openapi_document_carries_the_pyproject_version(client: TestClient) -> None:
    assert client.get("/openapi.json").json()["info"]["version"] == _pyproject_version()


def test_the_helm_chart_deploys_the_pyproject_version() -> None:
    # Helm cannot read Python metadata: the chart's appVersion (the default image tag) is
    # the one copy, and this test keeps it equal to pyproject's.
    chart = yaml.safe_load((REPO / "helm" / "celeriac" / "Chart.yaml").read_text())
    assert chart["appVersion"] == _pyproject_version()
