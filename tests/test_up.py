"""`celeriac up` runs the whole platform on embedded defaults and stops it cleanly."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pandas as pd
import pytest

from celeriac.platform.auth.jwt import Role, verify_token
from celeriac.platform.keys.tokens import parse_key
from celeriac.platform.queues import Pool
from celeriac.platform.settings import load_settings
from celeriac.workers.celery_app import create_celery_app

from support import celeriac_env, free_port

pytestmark = pytest.mark.slow


def _processes_with_env(marker: str) -> list[int]:
    """PIDs whose environment contains ``marker`` (the test's own var dir)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if marker.encode() in (entry / "environ").read_bytes():
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


class Up:
    def __init__(self, var_dir: Path, port: int) -> None:
        self.var_dir, self.port = var_dir, port
        # up's own stderr (progress, why it stopped) and its children's logs, kept for the
        # assertion messages: a run that failed under load said only "connection refused".
        self.stderr_path = var_dir.parent / f"up-{port}.stderr"
        with self.stderr_path.open("w") as stderr:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "celeriac.platform.cli", "up", "--port", str(port)],
                env=celeriac_env(var_dir),
                cwd=var_dir.parent,
                stdout=subprocess.PIPE,
                stderr=stderr,
                text=True,
            )
        self.banner: dict[str, str] = {}
        self.ready = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            if ":" in line and line.startswith("  "):
                key, value = line.strip().split(":", 1)
                self.banner[key] = value.strip()
            if line.startswith("Press Ctrl-C"):
                self.ready.set()
        self.ready.set()  # up ended without a banner: the waits below stop at once

    def progress(self) -> list[str]:
        """up's own lines ("celeriac up: ..."), then the last lines of everything else."""
        lines = self.stderr_path.read_text(errors="replace").splitlines()
        return [line for line in lines if line.startswith("celeriac")] + lines[-20:]


@pytest.fixture
def up(var_dir: Path) -> Iterator[Up]:
    running = Up(var_dir, free_port())
    yield running
    if running.process.poll() is None:
        running.process.kill()
        running.process.wait()
    for pid in _processes_with_env(f"CELERIAC_VAR_DIR={var_dir}\0"):
        os.kill(pid, signal.SIGKILL)


def _console_signs_in(console_url: str, key: str) -> None:
    """The console is served with its assets, and a session is kept without Redis (the
    embedded mode keeps it in the database)."""
    with httpx.Client() as browser:
        page = browser.post(
            f"{console_url}/sign-in", data={"credential": key}, follow_redirects=True
        )
        assert page.status_code == 200, page.text
        assert "<h1>Jobs</h1>" in page.text
        assert browser.get(f"{console_url.removesuffix('/console')}/docs").status_code == 200


def _job_runs_end_to_end(base: str, admin_token: str) -> None:
    """A tenant made through the admin API submits a job over HTTP; it succeeds, with the
    numbers pandas computes directly (SQLite, filesystem broker, local keyring: no
    server of any kind)."""
    admin = {"Authorization": f"Bearer {admin_token}"}
    tenant = httpx.post(
        f"{base}/v1/admin/tenants", json={"slug": "laptop", "name": "Laptop"}, headers=admin
    ).json()
    scopes = {"scopes": ["jobs:write", "jobs:read"]}
    key = httpx.post(
        f"{base}/v1/admin/tenants/{tenant['id']}/keys", json=scopes, headers=admin
    ).json()["key"]
    headers = {"Authorization": f"Bearer {key}"}
    records = [{"id": i, "amount": i * 2.5, "city": "Lyon" if i % 3 else "Oslo"} for i in range(50)]
    spec = {"datasets": [{"name": "tabular"}], "analyzers": [{"name": "summary"}]}
    deadline = time.monotonic() + 60
    # The banner came once the compute worker had published its plugins: accepted at once.
    submitted = httpx.post(
        f"{base}/v1/jobs", json={"pipeline": spec, "records": records}, headers=headers
    )
    assert submitted.status_code == 202, submitted.text
    job_url = f"{base}/v1/jobs/{submitted.json()['id']}"
    while (state := httpx.get(job_url, headers=headers).json()["state"]) in ("queued", "running"):
        assert time.monotonic() < deadline + 60, "the job did not finish"
        time.sleep(0.2)
    assert state == "succeeded"
    summary = httpx.get(f"{job_url}/results", headers=headers).json()["analyses"]["summary"]
    amount = summary["tabular"]["numeric"]["amount"]
    expected = pd.DataFrame(records)["amount"].describe()
    assert amount["mean"] == pytest.approx(expected["mean"])
    assert amount["std"] == pytest.approx(expected["std"])
    assert amount["p75"] == pytest.approx(expected["75%"])


def test_up_serves_the_api_and_every_pool_then_stops_on_ctrl_c(
    up: Up, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert up.ready.wait(300), f"celeriac up printed no banner: {up.progress()}"
    assert "API key" in up.banner, f"celeriac up ended without a banner: {up.progress()}"
    base = f"http://127.0.0.1:{up.port}"
    assert up.process.poll() is None, up.progress()
    assert httpx.get(f"{base}/healthz").json() == {"status": "ok"}, up.progress()
    progress = "\n".join(up.progress())
    for pool in Pool:
        assert f"the {pool.value} worker: ready" in progress
    assert "the compute worker's plugin registry: ready" in progress
    credentials = up.var_dir / "credentials"
    assert credentials.stat().st_mode & 0o777 == 0o600
    assert up.banner["API key"] in credentials.read_text()
    assert up.banner["admin token"] in credentials.read_text()
    # The README's first job, as it is written there, right after the banner.
    first = httpx.post(
        f"{base}/v1/jobs",
        headers={"Authorization": f"Bearer {up.banner['API key']}", "Idempotency-Key": "first-job"},
        json={
            "pipeline": "tabular-summary",
            "priority": "high",
            "records": [{"id": 1, "amount": 9.5}, {"id": 2, "amount": 12}],
        },
    )
    assert first.status_code == 202, first.text
    assert httpx.get(f"{base}/readyz").status_code == 200
    assert parse_key(up.banner["API key"]) is not None
    _console_signs_in(up.banner["console"].split()[0], up.banner["API key"])

    monkeypatch.setenv("CELERIAC_VAR_DIR", str(up.var_dir))
    settings = load_settings()
    assert verify_token(settings, up.banner["admin token"]).role is Role.ADMIN

    # Every pool's worker consumes its own queue through the embedded broker.
    client = create_celery_app(settings)
    for pool in Pool:
        assert client.send_task(f"celeriac.{pool.value}.ping").get(timeout=60) == pool.value

    _job_runs_end_to_end(base, up.banner["admin token"])

    marker = f"CELERIAC_VAR_DIR={up.var_dir}\0"
    assert len(_processes_with_env(marker)) >= 6  # up, api, 3 workers (+ children), beat
    up.process.send_signal(signal.SIGINT)
    assert up.process.wait(timeout=60) == 0
    assert _processes_with_env(marker) == []

    # A second run reuses the demo tenant and prints the same key.
    again = Up(up.var_dir, free_port())
    try:
        assert again.ready.wait(300), again.progress()
        assert again.banner["API key"] == up.banner["API key"]
    finally:
        again.process.send_signal(signal.SIGINT)
        assert again.process.wait(timeout=60) == 0
