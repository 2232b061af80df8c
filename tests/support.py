"""Helpers for tests that run the celeriac command as a user would."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import uuid
from collections.abc import Sequence
from pathlib import Path

from celeriac.platform.tasks import Publication, Publisher


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def celeriac_env(var_dir: Path, **settings: str) -> dict[str, str]:
    """The environment for a ``celeriac`` subprocess: no CELERIAC_ variable leaks in."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CELERIAC_")}
    env["CELERIAC_VAR_DIR"] = str(var_dir)
    env["CELERIAC_LOG__LEVEL"] = "INFO"
    for key, value in settings.items():
        env[f"CELERIAC_{key.upper()}"] = value
    return env


def run_celeriac(
    var_dir: Path, *args: str, cwd: Path | None = None, **settings: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "celeriac.platform.cli", *args],
        env=celeriac_env(var_dir, **settings),
        cwd=cwd or var_dir.parent,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


class RecordingPublisher(Publisher):
    """A publisher that records what the steps publish instead of sending it."""

    def __init__(self) -> None:
        super().__init__()
        self.publications: list[Publication] = []

    def publish_many(self, publications: Sequence[Publication]) -> list[str]:
        self.publications += publications
        return [p.message_id or str(uuid.uuid4()) for p in publications]

    @property
    def messages(self) -> list[tuple[str, str]]:
        """(task name, job id) of each publication, in order."""
        return [(str(p.name), p.kwargs.get("job_id", "")) for p in self.publications]
