"""The liveness probe of the worker pools and beat: the command the chart runs
(``celeriac-alive <var_dir>/heartbeat/<name> <max age>``, the image's docker/celeriac-alive)
reports a running process healthy, and unhealthy once its loop stops (frozen with SIGSTOP),
and healthy again when it resumes. tests/deploy/test_helm.py checks that the chart's probes
are this command on this file."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest

from celeriac.platform.queues import Pool
from celeriac.platform.settings import Settings
from celeriac.workers.health import heartbeat_path

from worker_support import Workers, wait_until

ALIVE = Path(__file__).resolve().parents[2] / "docker" / "celeriac-alive"
HEARTBEAT_SECONDS = 0.5
MAX_AGE_SECONDS = 3


def _probe(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(ALIVE), str(path), str(MAX_AGE_SECONDS)],
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "args"),
    [
        ("orchestration", ("worker", "--pool", Pool.ORCHESTRATION.value, "--concurrency", "4")),
        ("compute", ("worker", "--pool", Pool.COMPUTE.value, "--concurrency", "1")),
        ("beat", ("beat",)),
    ],
)
def test_the_probe_fails_while_the_process_is_frozen(
    name: str,
    args: tuple[str, ...],
    worker_env: dict[str, str],
    var_dir: Path,
    api_settings: Settings,
) -> None:
    worker_env["CELERIAC_WORKERS__HEARTBEAT_SECONDS"] = str(HEARTBEAT_SECONDS)
    path = heartbeat_path(api_settings, name)
    running = Workers(var_dir, worker_env)
    assert _probe(path).returncode == 1  # nothing has started: no heartbeat yet
    process = running.start(name, *args)
    try:
        wait_until(lambda: _probe(path).returncode == 0, 120, f"{name}'s heartbeat")
        os.killpg(process.pid, signal.SIGSTOP)  # the whole process group: parent and pool
        try:
            frozen = wait_until(
                lambda: (p := _probe(path)).returncode == 1 and p, 30, f"{name} to look dead"
            )
            assert "old (more than" in frozen.stderr
        finally:
            os.killpg(process.pid, signal.SIGCONT)
        wait_until(lambda: _probe(path).returncode == 0, 30, f"{name} to look alive again")
        assert process.poll() is None
    finally:
        running.stop_all()
