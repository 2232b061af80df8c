"""``celeriac-client`` installs alone: its wheel, in a fresh virtualenv with nothing but
its declared dependencies (httpx, pydantic and theirs), runs a job against a live
platform; beside the platform's own wheel, both import."""

from __future__ import annotations

import email
import re
import shutil
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest
from conftest import TenantFixture

from sdk_support import LivePlatform

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
UV = Path(sys.executable).parent / "uv"


def build_client_wheel(tmp_path: Path) -> Path:
    """The SDK's wheel, built from a copy (setuptools writes egg-info beside the source)."""
    source = tmp_path / "client-source"
    skipped = shutil.ignore_patterns("*.egg-info", "build", "__pycache__")
    shutil.copytree(REPO / "client", source, ignore=skipped)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "build",
            "--wheel",
            "--no-isolation",
            "--outdir",
            str(tmp_path / "dist"),
        ],
        cwd=source,
        check=True,
        capture_output=True,
    )
    (wheel,) = (tmp_path / "dist").glob("celeriac_client-*.whl")
    return wheel


def test_the_wheel_declares_httpx_and_pydantic_only(tmp_path: Path) -> None:
    wheel = build_client_wheel(tmp_path)
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        metadata_name = next(n for n in names if n.endswith(".dist-info/METADATA"))
        metadata = email.message_from_bytes(zf.read(metadata_name))
    modules = {n for n in names if n.endswith(".py")}
    assert modules == {f"celeriac/client/{p.name}" for p in (REPO / "client").glob("*.py")}
    assert "celeriac/__init__.py" not in names  # a namespace shared with the platform
    assert "celeriac/client/py.typed" in names
    required = [r for r in metadata.get_all("Requires-Dist") or [] if "extra ==" not in r]
    assert sorted(r.split(">")[0] for r in required) == ["httpx", "pydantic"]


def test_installed_alone_it_runs_a_job(
    live_platform: LivePlatform, tenant: TenantFixture, tmp_path: Path
) -> None:
    tenant_key = tenant.key
    wheel = build_client_wheel(tmp_path)
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=False)
    python = env_dir / "bin" / "python"
    # From uv's cache (filled by `make install`, hence the lock's versions): no network,
    # and only what the wheel asks for.
    subprocess.run(
        [
            str(UV),
            "pip",
            "install",
            "--python",
            str(python),
            "--offline",
            "-q",
            "-c",
            str(REPO / "requirements.lock"),
            str(wheel),
        ],
        check=True,
        capture_output=True,
    )
    listed = subprocess.run(
        [str(UV), "pip", "freeze", "--python", str(python)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    installed = {re.split(r"==| @ ", line)[0].lower() for line in listed.splitlines() if line}
    assert {"celeriac-client", "httpx", "pydantic"} <= installed
    assert not installed & {"celeriac", "pandas", "fastapi", "celery", "rich"}

    script = f"""
import importlib.util, sys
from celeriac.client import Client, JobState
assert importlib.util.find_spec("celeriac.platform") is None
assert importlib.util.find_spec("pandas") is None
with Client(base_url={live_platform.url!r}, api_key={tenant_key!r}) as client:
    job = client.jobs.submit(records=[{{"x": 1}}, {{"x": 3}}], pipeline="tabular-summary")
    done = job.wait(timeout=120, progress=True)
    assert done.state is JobState.SUCCEEDED, done.state
    numeric = done.results()["analyses"]["summary"]["tabular"]["numeric"]
    print(numeric["x"]["mean"])
    try:
        done.results(as_frame=True)
    except ImportError as exc:
        print(exc)
"""
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    result = subprocess.run(
        [str(python), "-c", script],
        cwd=outside,
        capture_output=True,
        text=True,
        timeout=180,
        env={"PATH": "/usr/bin:/bin"},
        check=False,
    )
    assert result.returncode == 0, result.stderr
    mean, hint = result.stdout.splitlines()
    assert float(mean) == 2.0
    assert "celeriac-client[pandas]" in hint
    # Without rich or tqdm, the progress bar is a line per event on stderr.
    assert "succeeded" in result.stderr.splitlines()[-1]
    cli = subprocess.run(
        [str(env_dir / "bin" / "celeriac-client"), "--help"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert cli.returncode == 0
    assert "jobs" in cli.stdout


def test_beside_the_platform_both_import(tmp_path: Path) -> None:
    client_wheel = build_client_wheel(tmp_path)
    source = tmp_path / "source"
    skipped = (".git", ".venv*", "var", "*.egg-info", "build", "dist", "__pycache__", ".*_cache")
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(*skipped))
    subprocess.run(
        [
            sys.executable,
            "-m",
            "build",
            "--wheel",
            "--no-isolation",
            "--outdir",
            str(tmp_path / "dist"),
        ],
        cwd=source,
        check=True,
        capture_output=True,
    )
    (platform_wheel,) = (tmp_path / "dist").glob("celeriac-*.whl")
    with zipfile.ZipFile(platform_wheel) as zf:
        assert not any(n.startswith("celeriac/client/") for n in zf.namelist())
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=False)
    python = env_dir / "bin" / "python"
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    # Third-party packages from this virtualenv through a plain path entry (its .pth
    # files, such as the editable installs' finders, are not run from there).
    deps = [p for p in sys.path if p.endswith("site-packages")]
    (Path(site) / "deps.pth").write_text("\n".join(deps) + "\n")
    subprocess.run(
        [
            str(UV),
            "pip",
            "install",
            "--python",
            str(python),
            "--no-deps",
            "-q",
            "--offline",
            str(platform_wheel),
            str(client_wheel),
        ],
        check=True,
        capture_output=True,
    )
    check = (
        "import celeriac.client, celeriac.platform.jobs.routes, celeriac.client.webhooks\n"
        f"assert celeriac.client.__file__.startswith({site!r}), celeriac.client.__file__\n"
        f"assert celeriac.platform.jobs.routes.__file__.startswith({site!r})\n"
        "print(sorted(celeriac.__path__))\n"
    )
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    result = subprocess.run(
        [str(python), "-c", check],
        cwd=outside,
        capture_output=True,
        text=True,
        check=False,
        env={"PATH": "/usr/bin:/bin", "CELERIAC_VAR_DIR": str(tmp_path / "var")},
    )
    assert result.returncode == 0, result.stderr
