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
        [sys.executable, "-c", code], capture_output=True, text=True, check=False,
        cwd=tmp_path, env={"CELERIAC_VAR_DIR": str(tmp_path / "var"), "PATH": "/usr/bin"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
