"""Helpers for the deployment tests (tests/deploy): checkov, run from its own virtualenv
(see the Makefile: its pins would hold the project's celery, kombu and redis back)."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
CHECKOV = Path(os.environ.get("CHECKOV_BIN", REPO / ".venv-checkov" / "bin" / "checkov"))

CheckovReport = dict[str, Any]


def run_checkov(directory: Path, framework: str) -> CheckovReport:
    """checkov's JSON report on ``directory`` for one framework."""
    if not CHECKOV.exists():
        pytest.fail(f"{CHECKOV} is missing: `make install` creates it")
    # --skip-download: no calls to the vendor's platform (and no network is needed).
    result = subprocess.run(
        [
            str(CHECKOV),
            "--directory",
            str(directory),
            "--framework",
            framework,
            "--skip-download",
            "--output",
            "json",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode in (0, 1), result.stderr[-3000:]  # 1: some check failed
    parsed = json.loads(result.stdout)
    (report,) = parsed if isinstance(parsed, list) else [parsed]
    assert report["summary"]["parsing_errors"] == 0, report["summary"]
    assert report["summary"]["passed"] > 0, "checkov checked nothing"
    return dict(report)


def failures(report: CheckovReport) -> list[str]:
    return [
        f"{c['check_id']} {c['resource']} ({c['file_path']}): {c['check_name']}"
        for c in report["results"]["failed_checks"]
    ]


def unjustified_skips(report: CheckovReport) -> list[str]:
    """Skips without a reason a reviewer could weigh."""
    return [
        f"{c['check_id']} {c['resource']}"
        for c in report["results"]["skipped_checks"]
        if len(re.sub(r"\W", "", c["check_result"].get("suppress_comment") or "")) < 20
    ]
