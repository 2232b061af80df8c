"""Real worker processes (all three pools, and beat when a test asks) on the test's
PostgreSQL database and Redis dbs, for canvas tests driven through the API.

The test plugin packages under ``tests/plugins/`` are installed into a directory of this
test session's own and put on the workers' ``PYTHONPATH``: the compute registry finds
them through their entry points like any third-party plugin, and the project's virtualenv
is left as it was.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from celeriac.platform.settings import Settings

from support import celeriac_env
from worker_support import Workers, three_pools

PLUGINS = Path(__file__).resolve().parent.parent / "plugins"


@pytest.fixture(scope="session")
def test_plugins_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    target = tmp_path_factory.mktemp("plugins")
    sources = tmp_path_factory.mktemp("plugin-sources")
    packages = []
    for package in sorted(PLUGINS.iterdir()):
        if (package / "pyproject.toml").exists():
            # Built from a copy: setuptools leaves build/ and *.egg-info beside the source.
            copy = sources / package.name
            shutil.copytree(package, copy, ignore=shutil.ignore_patterns("build", "*.egg-info"))
            packages.append(str(copy))
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-index",
            "--no-build-isolation",
            "--target",
            str(target),
            *packages,
        ],
        check=True,
        capture_output=True,
    )
    return target


@pytest.fixture
def worker_env(api_settings: Settings, var_dir: Path, test_plugins_path: Path) -> dict[str, str]:
    """The workers' environment; tests add CELERIAC_* overrides to it before starting."""
    env = celeriac_env(
        var_dir,
        database_url=api_settings.database_url,
        broker_url=api_settings.broker_url,
        redis_url=str(api_settings.redis_url),
    )
    # Webhook receivers in tests listen on loopback over http, as the API's settings allow.
    env["CELERIAC_WEBHOOKS__ALLOW_HTTP"] = "true"
    env["CELERIAC_WEBHOOKS__ALLOWED_CIDRS"] = '["127.0.0.0/8", "::1/128"]'
    env["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(test_plugins_path), env.get("PYTHONPATH")])
    )
    return env


@pytest.fixture
def workers(worker_env: dict[str, str], var_dir: Path) -> Iterator[Workers]:
    """All three pools running; the compute pool has published its plugin registry."""
    with three_pools(worker_env, var_dir) as running:
        yield running
