"""Processes a bench starts: each in a session of its own (a signal meant for the bench
never reaches it), stopped by process group (SIGTERM, then SIGKILL after a grace period),
and sent SIGTERM by the kernel if the bench dies without cleaning up (SIGKILL). Everything
listens on and connects to 127.0.0.1 only."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from bench.kit.cli import BenchError

HOST = "127.0.0.1"
REPO = Path(__file__).resolve().parents[2]

# Run before the real command (which it execs): the kernel sends it SIGTERM when the bench's
# process goes away without cleaning up (SIGKILL), so nothing is left running.
_LAUNCHER = """
import ctypes, os, signal, sys
parent = int(sys.argv[1])
ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG
if os.getppid() != parent:
    sys.exit(1)
os.execv(sys.argv[2], sys.argv[2:])
"""


def launched(argv: list[str]) -> list[str]:
    """``argv`` behind the launcher that ties its life to this process's."""
    return [sys.executable, "-c", _LAUNCHER, str(os.getpid()), *argv]


def api_argv(
    port: int, entry: str = "celeriac.platform.cli", workers: int | None = None
) -> list[str]:
    """``celeriac api`` on 127.0.0.1:``port`` (``entry``: a module run with ``-m`` in place
    of the CLI, one that patches something and then runs it)."""
    argv = [sys.executable, "-m", entry, "api", "--host", HOST, "--port", str(port)]
    return argv if workers is None else [*argv, "--workers", str(workers)]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, 0))
        return int(probe.getsockname()[1])


def children(pid: int) -> list[int]:
    """Pids of ``pid``'s direct children (a prefork worker's pool processes)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                stat = (entry / "stat").read_text()
                if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(entry.name))
    return found


def group_members(pgid: int) -> list[int]:
    """Pids of every live process in process group ``pgid``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                stat = (entry / "stat").read_text()
                if int(stat.rsplit(")", 1)[1].split()[2]) == pgid:
                    found.append(int(entry.name))
    return found


@dataclass
class Process:
    """One started command (and its process group), logging to ``log_path``."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path

    @classmethod
    def start(
        cls,
        name: str,
        argv: list[str],
        env: dict[str, str],
        cwd: Path,
        log_path: Path,
        append: bool = True,
    ) -> Process:
        with open(log_path, "ab" if append else "wb") as log:
            popen = subprocess.Popen(
                launched(argv),
                env=env,
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        return cls(name, popen, log_path)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def check_alive(self) -> None:
        if not self.alive():
            raise BenchError(
                f"{self.name} exited with status {self.popen.returncode}:\n{self.log_tail()}"
            )

    def stop(self, grace: float = 20.0, how: signal.Signals = signal.SIGTERM) -> None:
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, how)
            try:
                self.popen.wait(grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait()
        # Pool processes a Celery parent left behind (same process group).
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGKILL)

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(line[:400] for line in text[-lines:])

    def children(self) -> list[int]:
        return children(self.pid)


# --- py-spy -------------------------------------------------------------------------------


def _py_spy() -> str:
    return str(Path(sys.executable).with_name("py-spy"))


def py_spy_dump(pid: int) -> str:
    """The Python stacks of process ``pid`` (py-spy from the virtualenv), or why not."""
    try:
        done = subprocess.run(
            [_py_spy(), "dump", "--pid", str(pid)],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"(py-spy dump failed: {exc})"
    return (done.stdout + done.stderr).strip()


class Profiler:
    """py-spy ``record --format raw`` on a process and its children, until stopped."""

    def __init__(self, target: Process, out: Path) -> None:
        self.out = out
        self.popen = subprocess.Popen(
            [
                _py_spy(),
                "record",
                "--format",
                "raw",
                "--rate",
                "100",
                "--subprocesses",
                "--nonblocking",
                "--full-filenames",
                "-o",
                str(out),
                "-p",
                str(target.pid),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGINT)
            try:
                self.popen.wait(30)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()


_REPO_FRAME = f"({REPO}/"  # with --full-filenames


def summarize_profile(path: Path, top: int = 12) -> None:
    """Self time (leaf frames), and inclusive time of the repository's own functions."""
    if not path.exists():
        print(f"  (no profile written to {path})")
        return
    leaf: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = stack.split(";")
        if frames[-1].strip().startswith("process ") or "idle" in frames[-1]:
            continue
        total += n
        leaf[_short(frames[-1])] += n
        mine = {
            _short(f)
            for f in frames[1:]
            if _REPO_FRAME in f and "/.venv/" not in f and "/platform/cli.py" not in f
        }
        for frame in mine:
            inclusive[frame] += n
    print(f"  {path.name}: {total} busy samples (100/s per process)")
    print("    self time (leaf frames):")
    for frame, n in leaf.most_common(top):
        print(f"      {100 * n / max(total, 1):5.1f}%  {frame}")
    print("    inclusive, Celeriac's own functions:")
    for frame, n in inclusive.most_common(top):
        print(f"      {100 * n / max(total, 1):5.1f}%  {frame}")


def _short(frame: str) -> str:
    # py-spy raw frames: "function (path/to/file.py:line)"; aggregated per function.
    name, _, where = frame.partition(" (")
    where = where.rstrip(")").rsplit(":", 1)[0]
    for marker in ("site-packages/", f"{REPO}/", "/lib/python3."):
        if marker in where:
            where = where.split(marker, 1)[1]
            if marker == "/lib/python3.":  # 11/json/decoder.py
                where = where.split("/", 1)[-1]
    return f"{name.strip()} ({where})"
