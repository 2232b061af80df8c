"""Dependencies point one way: workers import platform, never the reverse, and the API
process never loads compute libraries."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
FORBIDDEN_IN_PLATFORM = ("celeriac.workers", "workers", "pandas", "numpy", "sklearn")


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_platform_imports_no_worker_or_compute_module() -> None:
    offenders = {
        f"{path.relative_to(REPO)}: {name}"
        for path in (REPO / "platform").rglob("*.py")
        for name in _imports(path)
        if any(name == f or name.startswith(f + ".") for f in FORBIDDEN_IN_PLATFORM)
    }
    assert offenders == set()


def test_api_process_loads_no_compute_library(tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "from celeriac.platform.api.app import create_app\n"
        "create_app()\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('pandas', 'numpy', 'sklearn') or m.startswith('celeriac.workers'))\n"
        "print(loaded)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=False,
        cwd=tmp_path,
        env={"CELERIAC_VAR_DIR": str(tmp_path / "var"), "PATH": "/usr/bin"},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def _calls_naming(path: Path, names: set[str], callees: set[str]) -> list[str]:
    """Calls of ``callees`` (by their last name) whose arguments mention one of ``names``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        callee = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
        if callee not in callees:
            continue
        mentioned = {n.id for arg in node.args for n in ast.walk(arg) if isinstance(n, ast.Name)}
        if mentioned & names:
            found.append(f"{path.relative_to(REPO)}:{node.lineno} {callee}")
    return found


def test_only_the_metrics_module_writes_usage_records() -> None:
    """Billing has one definition of each metric: ``platform/usage/metrics.py`` is the one
    module that builds a usage record or inserts one."""
    metrics = REPO / "platform" / "usage" / "metrics.py"
    offenders = [
        hit
        for folder in ("platform", "workers")
        for path in (REPO / folder).rglob("*.py")
        if path != metrics and "models" not in path.parts
        for hit in _calls_naming(path, {"UsageRecord"}, {"UsageRecord", "insert", "add"})
    ]
    offenders += [
        f"{path.relative_to(REPO)}: UsageRecord(...)"
        for folder in ("platform", "workers")
        for path in (REPO / folder).rglob("*.py")
        if path != metrics and "models" not in path.parts and "UsageRecord(" in path.read_text()
    ]
    assert offenders == []


def test_every_job_statement_is_in_the_jobs_repository() -> None:
    """Statements on ``jobs`` and ``job_tasks`` live in ``platform/jobs/repository.py``,
    scoped by tenant there."""
    repository = REPO / "platform" / "jobs" / "repository.py"
    callees = {"select", "update", "insert", "delete", "select_from", "get"}
    offenders = [
        hit
        for folder in ("platform", "workers")
        for path in (REPO / folder).rglob("*.py")
        if path != repository and "models" not in path.parts
        for hit in _calls_naming(path, {"Job", "JobTask"}, callees)
    ]
    assert offenders == []
