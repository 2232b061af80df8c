"""The distribution ships every module under its celeriac.* name, and nothing shadows
the standard library's ``platform``."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
import venv
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGE_ROOTS = {
    "celeriac.platform": "platform",
    "celeriac.workers": "workers",
    "celeriac.migrations": "migrations",
}
# celeriac.client is a distribution of its own (client/pyproject.toml, ADR 0015).


def _source_packages() -> set[str]:
    found = set()
    for name, folder in PACKAGE_ROOTS.items():
        for init in (REPO / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(REPO / folder)
            found.add(".".join([name, *rel.parts]))
    found.add("celeriac.platform")  # no __init__.py by design (see test below)
    return found


def _source_modules() -> set[str]:
    modules = set()
    for name, folder in PACKAGE_ROOTS.items():
        for path in (REPO / folder).rglob("*.py"):
            rel = path.relative_to(REPO / folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            modules.add(".".join([name, *parts]))
    return modules


def test_every_source_package_is_in_the_package_list() -> None:
    config = tomllib.loads((REPO / "pyproject.toml").read_text())
    listed = set(config["tool"]["setuptools"]["packages"])
    assert listed == _source_packages()


def test_platform_folder_does_not_shadow_the_standard_library() -> None:
    assert not (REPO / "platform" / "__init__.py").exists()
    code = (
        "import platform; platform.system(); import celeriac.platform, celeriac.workers; "
        "import sysconfig; assert platform.__file__.startswith(sysconfig.get_paths()['stdlib'])"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.slow
def test_wheel_installs_into_a_fresh_venv_and_imports_every_module(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    # Built from a copy: setuptools writes celeriac.egg-info into the source tree, and a
    # stale one at the repo root would shadow the installed metadata (and its entry
    # points) for any process started there.
    source = tmp_path / "source"
    skipped = (".git", ".venv", "var", "*.egg-info", "build", "dist", "__pycache__", ".*_cache")
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(*skipped))
    subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(dist)],
        cwd=source,
        check=True,
        capture_output=True,
    )
    (wheel,) = dist.glob("celeriac-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        shipped = {
            n.removesuffix(".py").removesuffix("/__init__").replace("/", ".")
            for n in zf.namelist()
            if n.endswith(".py")
        }
        assert "celeriac/platform/py.typed" in zf.namelist()
    assert _source_modules() <= shipped, _source_modules() - shipped

    # A fresh venv whose third-party packages come from this one through a plain path
    # entry (.pth files in that folder, such as the editable install's finder, are not run).
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=False)
    fresh_python = env_dir / "bin" / "python"
    site = subprocess.run(
        [str(fresh_python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    deps = [p for p in sys.path if p.endswith("site-packages")]
    (Path(site) / "deps.pth").write_text("\n".join(deps) + "\n")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(fresh_python),
            "install",
            "--no-deps",
            "--no-index",
            "-q",
            str(wheel),
        ],
        check=True,
        capture_output=True,
    )
    check = (
        "import importlib, sys\n"
        f"site = {site!r}\n"
        f"modules = {sorted(_source_modules() - {'celeriac.migrations.env'})!r}\n"
        "for name in modules:\n"
        "    module = importlib.import_module(name)\n"
        "    assert module.__file__.startswith(site), (name, module.__file__)\n"
        "print(len(modules))\n"
    )
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    result = subprocess.run(
        [str(fresh_python), "-c", check],
        cwd=outside,
        capture_output=True,
        text=True,
        check=False,
        env={"PATH": "/usr/bin:/bin", "CELERIAC_VAR_DIR": str(tmp_path / "var")},
    )
    assert result.returncode == 0, result.stderr
    assert int(result.stdout.strip()) == len(_source_modules()) - 1
