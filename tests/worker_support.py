"""Helpers for tests that run real worker processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient


@dataclass
class Workers:
    var_dir: Path
    env: dict[str, str]
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def start(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        log = (self.var_dir / f"{name}.log").open("ab")
        process = subprocess.Popen(
            [sys.executable, "-m", "celeriac.platform.cli", *args],
            env=self.env, cwd=self.var_dir.parent, stdout=log, stderr=log,
            start_new_session=True,
        )  # fmt: skip
        self.processes[name] = process
        return process

    def stop(self, name: str) -> None:
        process = self.processes.pop(name)
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()

    def stop_all(self) -> None:
        for name in list(self.processes):
            self.stop(name)

    def log(self, name: str) -> str:
        return (self.var_dir / f"{name}.log").read_text(errors="replace")


def wait_until(condition: Callable[[], Any], timeout: float, what: str, every: float = 0.1) -> Any:
    """Poll ``condition`` until it returns something truthy (synchronisation on an
    observable state, with a deadline)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def wait_for_job(client: TestClient, headers: dict[str, str], job_id: str,
                 timeout: float = 120) -> dict[str, Any]:  # fmt: skip
    def final() -> dict[str, Any] | None:
        job: dict[str, Any] = client.get(f"/v1/jobs/{job_id}", headers=headers).json()
        done = job["state"] in ("succeeded", "partial", "failed", "cancelled")
        return job if done else None

    result: dict[str, Any] = wait_until(final, timeout, f"job {job_id} to end", every=0.2)
    return result
