"""Helpers for tests that run real worker processes."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from celeriac.platform.queues import Pool


@dataclass
class Workers:
    var_dir: Path
    env: dict[str, str]
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def start(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        """``celeriac *args`` as process ``name``."""
        return self.start_argv(name, [sys.executable, "-m", "celeriac.platform.cli", *args])

    def start_argv(
        self, name: str, argv: list[str], env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        log = (self.var_dir / f"{name}.log").open("ab")
        process = subprocess.Popen(
            argv,
            env=env or self.env,
            cwd=self.var_dir.parent,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
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


def wait_for_job(
    client: TestClient, headers: dict[str, str], job_id: str, timeout: float = 120
) -> dict[str, Any]:
    def final() -> dict[str, Any] | None:
        job: dict[str, Any] = client.get(f"/v1/jobs/{job_id}", headers=headers).json()
        done = job["state"] in ("succeeded", "partial", "failed", "cancelled")
        return job if done else None

    result: dict[str, Any] = wait_until(final, timeout, f"job {job_id} to end", every=0.2)
    return result


@dataclass
class Reply:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b"ok"
    delay: float = 0.0


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes
    path: str


class Receiver:
    """An HTTP server answering from a script (the last reply repeats)."""

    def __init__(self, *replies: Reply) -> None:
        self.replies = list(replies) or [Reply()]
        self.received: list[Received] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                receiver.received.append(Received(dict(self.headers), body, self.path))
                reply = receiver.replies[min(len(receiver.received), len(receiver.replies)) - 1]
                if reply.delay:
                    time.sleep(reply.delay)
                self.send_response(reply.status)
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                self.send_header("content-length", str(len(reply.body)))
                self.end_headers()
                self.wfile.write(reply.body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@contextlib.contextmanager
def three_pools(
    worker_env: dict[str, str], var_dir: Path, orchestration_slots: int = 20
) -> Iterator[Workers]:
    """The three pools (the orchestration pool with ``orchestration_slots``), once every
    one is ready and the compute pool has published its plugin registry."""
    running = Workers(var_dir, worker_env)
    running.start(
        "orchestration",
        "worker",
        "--pool",
        Pool.ORCHESTRATION.value,
        "--concurrency",
        str(orchestration_slots),
    )
    running.start(
        "distribution", "worker", "--pool", Pool.DISTRIBUTION.value, "--concurrency", "20"
    )
    running.start("compute", "worker", "--pool", Pool.COMPUTE.value)
    try:
        wait_until(
            lambda: all(
                "ready." in running.log(name)
                for name in ("orchestration", "distribution", "compute")
            ),
            # Generous: at load 20 on 2 cores the compute pool alone took 90 s to start.
            180,
            "the three pools to start",
        )
        wait_until(
            lambda: "plugin registry published" in running.log("compute"),
            60,
            "the compute pool to publish its plugins",
        )
        yield running
    finally:
        running.stop_all()
