"""What ``latency.py`` and ``bigjob.py`` share: their own environment and the real
Celeriac processes they run in it.

:func:`environment` builds it and removes it again, also when the bench fails or is
stopped (Ctrl-C, SIGTERM, SIGHUP): a PostgreSQL database of the bench's own (dropped and
created), Redis db 2 (broker) and db 3 (cache and Celery result backend), flushed at the
start and the end, and a temporary directory (var dir: blobs and keyring; the processes'
logs; a bytecode cache). It migrates the schema and creates tenant ``bench`` with an API
key, both with the ``celeriac`` command.

Processes run in sessions of their own, so that a signal meant for the bench never reaches
them; they are stopped by process group (SIGTERM, then SIGKILL after a grace period), and
each also gets SIGTERM from the kernel if the bench dies without cleaning up (SIGKILL).
Everything listens on and connects to 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import httpx
import psycopg
import redis
from common import UNLIMITED_QUOTAS, flush_redis, scratch_dir

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
SAMPLE = REPO / "tests" / "data" / "sample_1000.ndjson"
HOST = "127.0.0.1"
PG_SERVER = f"postgresql://postgres@{HOST}:5432"
REDIS_SERVER = f"redis://{HOST}:6379"
BROKER_DB = 2
RESULT_DB = 3
TENANT_SLUG = "bench"
POOLS = ("orchestration", "distribution", "compute")
STARTUP_TIMEOUT_SECONDS = 120.0
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
FINAL_STATES = ("succeeded", "partial", "failed", "cancelled")


class BenchError(Exception):
    """Set-up or a process failed; the message says which."""


def note(message: str) -> None:
    """Progress goes to stderr; the tables go to stdout."""
    print(message, file=sys.stderr, flush=True)


def _terminate(signum: int, _frame: object) -> None:
    raise SystemExit(f"stopped by {signal.Signals(signum).name}")


def install_signal_handlers() -> None:
    """SIGTERM and SIGHUP unwind like Ctrl-C does, so that every ``finally`` runs."""
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGHUP, _terminate)
    # Even when started with SIGINT ignored (as a background job of a script).
    signal.signal(signal.SIGINT, signal.default_int_handler)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, 0))
        return int(probe.getsockname()[1])


def sample_records() -> list[dict[str, Any]]:
    import json

    return [json.loads(line) for line in SAMPLE.read_text().splitlines() if line.strip()]


# --- options both benches take -------------------------------------------------------------

# Compute pool processes are not replaced during a bench run unless asked. A pool process
# forked after the compute parent has used the database (the parent publishes the plugin
# registry once ready, and the engine of ``celeriac.platform.db`` keeps that connection in
# its pool) inherits the parent's PostgreSQL connection: two processes then talk on one
# socket and tasks fail with sqlalchemy NoSuchColumnError or psycopg
# DuplicatePreparedStatement, some after claiming their task row, which then stays
# ``running`` and the job never ends. Replacement happens every
# ``workers.compute_max_tasks_per_child`` (200) tasks; ``--max-tasks-per-child 0`` keeps that.
NO_REPLACEMENT = 1_000_000


def add_common_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--log-level",
        default="WARNING",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="the Celeriac processes' log level (logs are in the temporary directory)",
    )
    parser.add_argument(
        "--max-tasks-per-child",
        type=int,
        default=NO_REPLACEMENT,
        metavar="N",
        help="CELERIAC_WORKERS__COMPUTE_MAX_TASKS_PER_CHILD for the compute pool (default: "
        "no replacement during the run; 0: the platform's default, 200, which makes jobs "
        "fail once pool processes are replaced)",
    )
    parser.add_argument(
        "--cache",
        default="default",
        choices=["default", "blobs", "config", "off"],
        help="the shared Redis cache (CELERIAC_CACHE__*): the platform's default (on a local "
        "blob store, configuration only), blobs (hot blobs too: CACHE__BLOBS=on), config "
        "(CACHE__BLOBS=off) or off (CACHE__ENABLED=false), to measure what it changes",
    )
    parser.add_argument(
        "--keep-logs",
        action="store_true",
        help="keep the temporary directory (process logs) instead of removing it at the end",
    )


def settings_from_options(args: argparse.Namespace) -> dict[str, str]:
    if args.max_tasks_per_child < 0:
        raise BenchError("--max-tasks-per-child must not be negative")
    settings = {
        "default": {},
        "blobs": {"CELERIAC_CACHE__BLOBS": "on"},
        "config": {"CELERIAC_CACHE__BLOBS": "off"},
        "off": {"CELERIAC_CACHE__ENABLED": "false"},
    }[args.cache]
    if args.max_tasks_per_child != 0:
        limit = str(args.max_tasks_per_child)
        settings["CELERIAC_WORKERS__COMPUTE_MAX_TASKS_PER_CHILD"] = limit
    return settings


# --- processes ----------------------------------------------------------------------------


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


def _launched(argv: list[str]) -> list[str]:
    return [sys.executable, "-c", _LAUNCHER, str(os.getpid()), *argv]


@dataclass
class Process:
    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path

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

    def stop(self, grace: float = 20.0) -> None:
        if not self.alive():
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGTERM)
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
        """Pids of this process's direct children (a prefork worker's pool processes)."""
        found = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                with contextlib.suppress(OSError, IndexError, ValueError):
                    stat = (entry / "stat").read_text()
                    if int(stat.rsplit(")", 1)[1].split()[1]) == self.pid:
                        found.append(int(entry.name))
        return found


@dataclass
class Env:
    """The bench's environment: settings, directories, tenant, running processes."""

    name: str
    database: str
    root: Path
    var_dir: Path
    child_env: dict[str, str]
    api_key: str = ""
    processes: list[Process] = field(default_factory=list)
    api_url: str = ""

    # -- services --

    @property
    def database_url(self) -> str:
        return f"{PG_SERVER}/{self.database}"

    def db(self) -> psycopg.Connection[Any]:
        """A fresh autocommit connection to the bench database (the caller closes it)."""
        return psycopg.connect(self.database_url, autocommit=True, connect_timeout=5)

    def redis(self, db: int) -> redis.Redis:
        return redis.Redis.from_url(f"{REDIS_SERVER}/{db}", socket_timeout=30)

    # -- processes --

    def start(self, name: str, argv: list[str], extra_env: dict[str, str] | None = None) -> Process:
        env = {**self.child_env, **(extra_env or {})}
        log_path = self.root / f"{name}.log"
        with open(log_path, "ab") as log:
            popen = subprocess.Popen(
                _launched(argv),
                env=env,
                cwd=self.root,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        process = Process(name, popen, log_path)
        self.processes.append(process)
        return process

    def stop(self, process: Process) -> None:
        process.stop()
        if process in self.processes:
            self.processes.remove(process)

    def stop_all(self) -> None:
        for process in reversed(self.processes):
            with contextlib.suppress(Exception):
                process.stop()
        self.processes.clear()

    def check_alive(self) -> None:
        for process in self.processes:
            process.check_alive()

    def diagnose_job(self, job_id: str) -> str:
        """The job's row and task rows, the broker's lists and the processes' log tails: what
        a stuck job needs to be understood after the environment is gone."""
        lines = []
        with contextlib.suppress(Exception), self.db() as conn:
            job = conn.execute(
                "SELECT state, stage, dispatch_count, created_at, started_at, updated_at "
                "FROM jobs WHERE id = %s",
                (job_id,),
            ).fetchone()
            lines.append(f"job {job_id}: {job}")
            for row in conn.execute(
                "SELECT task_key, state, attempts, celery_task_id, started_at, finished_at, error "
                "FROM job_tasks WHERE job_id = %s ORDER BY created_at, task_key",
                (job_id,),
            ):
                lines.append(f"  task {row}")
        with contextlib.suppress(Exception):
            broker = self.redis(BROKER_DB)
            for key in sorted(broker.scan_iter(count=1000)):
                kind = broker.type(key)
                size = (
                    broker.llen(key)
                    if kind == b"list"
                    else broker.zcard(key)
                    if kind == b"zset"
                    else None
                )
                lines.append(f"  broker {key!r} {kind.decode()} {size if size is not None else ''}")
            broker.close()
        for process in self.processes:
            lines.append(f"--- {process.name} (alive: {process.alive()}), log tail:")
            lines.append(process.log_tail(15))
        for process in self.processes:
            if process.name == "worker-compute" and process.alive():
                for pid in (process.pid, *process.children()):
                    lines.append(f"--- py-spy dump of {process.name} pid {pid}:")
                    lines.append(py_spy_dump(pid))
        return "\n".join(lines)

    def celeriac(self, *args: str) -> str:
        """Run a ``celeriac`` command to completion and return its stdout."""
        done = subprocess.run(
            [sys.executable, "-m", "celeriac.platform.cli", *args],
            env=self.child_env,
            cwd=self.root,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        if done.returncode != 0:
            raise BenchError(f"celeriac {' '.join(args)} failed: {done.stderr.strip()[-2000:]}")
        return done.stdout

    def start_api(self, extra_env: dict[str, str] | None = None) -> Process:
        """``celeriac api`` on a free loopback port; returns once /readyz answers 200."""
        port = free_port()
        argv = [
            sys.executable,
            "-m",
            "celeriac.platform.cli",
            "api",
            "--host",
            HOST,
            "--port",
            str(port),
        ]
        process = self.start("api", argv, extra_env)
        self.api_url = f"http://{HOST}:{port}"
        deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS
        while True:
            process.check_alive()
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{self.api_url}/readyz", timeout=2).status_code == 200:
                    return process
            if time.monotonic() > deadline:
                raise BenchError(f"the API did not get ready in {STARTUP_TIMEOUT_SECONDS:.0f} s")
            time.sleep(0.1)

    def start_workers(
        self,
        include: Sequence[str] = (),
        concurrency: dict[str, int] | None = None,
        pool_env: dict[str, dict[str, str]] | None = None,
    ) -> dict[str, Process]:
        """The three pools, each with exactly the command line ``celeriac worker --pool P``
        execs (``celeriac.platform.cli.worker_argv``), plus ``--include`` of bench modules
        (found on PYTHONPATH = bench/) when asked. Returns once every pool answers a ping
        and the compute pool has published the plugin registry."""
        from celeriac.platform.cli import worker_argv
        from celeriac.platform.queues import Pool
        from celeriac.platform.settings import get_settings

        settings = get_settings()
        extra = {
            "PYTHONPATH": os.pathsep.join(
                filter(None, [str(BENCH_DIR), self.child_env.get("PYTHONPATH")])
            )
        }
        workers = {}
        for pool in POOLS:
            argv = worker_argv(settings, Pool(pool), (concurrency or {}).get(pool))
            if include:
                argv += ["--include", ",".join(include)]
            workers[pool] = self.start(
                f"worker-{pool}", argv, {**extra, **(pool_env or {}).get(pool, {})}
            )
        self.wait_workers_ready(workers)
        return workers

    def wait_workers_ready(self, workers: dict[str, Process]) -> None:
        app = client_app()
        deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS
        pending = set(workers)
        while pending:
            for pool in sorted(pending):
                workers[pool].check_alive()
                result = app.send_task(f"celeriac.{pool}.ping", queue=pool)
                with contextlib.suppress(Exception):
                    if result.get(timeout=2) == pool:
                        pending.discard(pool)
                result.forget()
            if pending and time.monotonic() > deadline:
                raise BenchError(f"pools {sorted(pending)} did not answer a ping in time")
        # Plugin registry rows, written when the compute worker is ready.
        while True:
            with self.db() as conn:
                row = conn.execute("SELECT count(*) FROM plugins").fetchone()
            if row and row[0] > 0:
                return
            if time.monotonic() > deadline:
                raise BenchError("the compute pool did not publish its plugin registry")
            time.sleep(0.2)


def py_spy_dump(pid: int) -> str:
    """The Python stacks of process ``pid`` (py-spy from the virtualenv), or why not."""
    py_spy = Path(sys.executable).with_name("py-spy")
    try:
        done = subprocess.run(
            [str(py_spy), "dump", "--pid", str(pid)],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"(py-spy dump failed: {exc})"
    return (done.stdout + done.stderr).strip()


@contextlib.contextmanager
def environment(
    name: str,
    database: str,
    log_level: str = "WARNING",
    extra: dict[str, str] | None = None,
    keep_logs: bool = False,
) -> Iterator[Env]:
    """Build the bench's environment; remove it (processes, database, Redis dbs,
    directory) when the block ends, however it ends."""
    root = scratch_dir(f"celeriac-bench-{name}-")
    var_dir = root / "var"
    var_dir.mkdir()
    settings = {
        "CELERIAC_VAR_DIR": str(var_dir),
        # From PG_SERVER (bench/chaos.py points it at a cluster of its own).
        "CELERIAC_DATABASE_URL": PG_SERVER.replace("postgresql://", "postgresql+psycopg://", 1)
        + f"/{database}",
        "CELERIAC_BROKER_URL": f"{REDIS_SERVER}/{BROKER_DB}",
        "CELERIAC_REDIS_URL": f"{REDIS_SERVER}/{RESULT_DB}",
        "CELERIAC_LOG__LEVEL": log_level,
        **(extra or {}),
    }
    saved = {k: v for k, v in os.environ.items() if k.upper().startswith("CELERIAC_")}
    for key in saved:
        del os.environ[key]
    os.environ.update(settings)  # this process publishes (bare canvas) with the same config
    _clear_process_caches()
    # A bytecode cache of the bench's own: with PYTHONDONTWRITEBYTECODE (as set on this
    # machine) every worker pool process would compile pandas/scikit-learn again, and
    # Celery kills a pool process that takes over 4 s to start.
    child_env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    child_env["PYTHONPYCACHEPREFIX"] = str(root / "pycache")
    env = Env(name, database, root, var_dir, child_env)
    created = False
    try:
        _recreate_database(database)
        created = True
        _flush_redis()
        note(
            f"environment: database {database}, Redis dbs {BROKER_DB} (broker) and "
            f"{RESULT_DB} (cache, results), {root}"
        )
        env.celeriac("migrate")
        out = env.celeriac("admin", "create-tenant", TENANT_SLUG)
        keys = [
            ln.removeprefix("api_key=").strip()
            for ln in out.splitlines()
            if ln.startswith("api_key=")
        ]
        if not keys:
            raise BenchError(f"celeriac admin create-tenant printed no api_key= line: {out!r}")
        env.api_key = keys[0]
        env.celeriac("admin", "set-quotas", TENANT_SLUG, *UNLIMITED_QUOTAS)
        note("compiling the worker code into the bench's bytecode cache ...")
        _prewarm(child_env, root)
        yield env
    finally:
        # A second Ctrl-C must not cut the clean-up short; it is bounded by the grace periods.
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        previous_term = signal.signal(signal.SIGTERM, signal.SIG_IGN)
        try:
            env.stop_all()
            with contextlib.suppress(Exception):
                _flush_redis()
            if created:
                with contextlib.suppress(Exception):
                    _drop_database(database)
            if keep_logs:
                shutil.rmtree(var_dir, ignore_errors=True)
                shutil.rmtree(root / "pycache", ignore_errors=True)
                note(f"logs kept in {root}")
            else:
                shutil.rmtree(root, ignore_errors=True)
            _clear_process_caches()
            for key in settings:
                os.environ.pop(key, None)
            os.environ.update(saved)
        finally:
            signal.signal(signal.SIGINT, previous)
            signal.signal(signal.SIGTERM, previous_term)


def _admin_conn() -> psycopg.Connection[Any]:
    return psycopg.connect(f"{PG_SERVER}/postgres", autocommit=True, connect_timeout=5)


def _recreate_database(database: str) -> None:
    with _admin_conn() as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{database}"')


def _drop_database(database: str) -> None:
    with _admin_conn() as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


def _flush_redis() -> None:
    flush_redis(REDIS_SERVER, (BROKER_DB, RESULT_DB))


def _clear_process_caches() -> None:
    from celeriac.platform import dispatch, settings, tasks

    for cached in (settings.get_settings, dispatch.get_dispatcher):
        cached.cache_clear()
    tasks.reset_default_publisher()
    _client_app.cache_clear()


def _prewarm(env: dict[str, str], cwd: Path) -> None:
    code = (
        "import celeriac.workers.celery_app\n"
        "import celeriac.platform.api.app\n"
        "from celeriac.workers.compute import setup_plugins\n"
        "setup_plugins()\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if done.returncode != 0:
        raise BenchError(f"importing the worker's code failed:\n{done.stderr[-2000:]}")


# --- Celery client ------------------------------------------------------------------------


def client_app() -> Any:
    """A client-only Celery app with the platform's configuration (broker db 2, result
    backend db 3); it knows no task code and publishes by name."""
    return _client_app()


@lru_cache(maxsize=1)
def _client_app() -> Any:
    from celery import Celery

    from celeriac.platform.settings import get_settings
    from celeriac.platform.tasks import celery_config

    app = Celery("celeriac-bench", set_as_current=False)
    app.conf.update(celery_config(get_settings()))
    return app


# --- CPU accounting -----------------------------------------------------------------------


def machine_busy_seconds() -> float:
    """CPU seconds all cores spent busy since boot."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]  # idle, iowait
    return (sum(values[:8]) - idle) / CLOCK_TICKS


def wait_for_quiet_machine(max_seconds: float = 20.0, busy_pct: float = 30.0) -> float:
    """Wait, up to ``max_seconds``, until the machine is less than ``busy_pct`` busy (in %
    of one core) over half a second; returns the last reading."""
    deadline = time.monotonic() + max_seconds
    while True:
        before = machine_busy_seconds()
        time.sleep(0.5)
        busy = 100 * (machine_busy_seconds() - before) / 0.5
        if busy < busy_pct or time.monotonic() > deadline:
            return busy


def group_cpu_seconds(groups: dict[int, str]) -> dict[str, float]:
    """CPU seconds (user + system, reaped children included) per named process group, plus
    ``postgres`` and ``redis`` (server-wide: other users of those servers count too)."""
    cpu: dict[str, float] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as f:
                raw = f.read()
        except OSError:
            continue
        name = raw[raw.index("(") + 1 : raw.rindex(")")]
        rest = raw[raw.rindex(")") + 2 :].split()
        ticks = sum(int(v) for v in rest[11:15])
        pgrp = int(rest[2])
        if pgrp in groups:
            key = groups[pgrp]
        elif name == "postgres":
            key = "postgres"
        elif name == "redis-server":
            key = "redis"
        else:
            continue
        cpu[key] = cpu.get(key, 0.0) + ticks / CLOCK_TICKS
    return cpu


@dataclass
class CpuMeter:
    """Accumulates CPU seconds per process group (and the machine's busy seconds) over
    the phases it is told about; this process counts as ``bench``."""

    groups: dict[int, str]
    totals: dict[str, float] = field(default_factory=dict)
    wall: float = 0.0
    _start: tuple[float, dict[str, float], float, float] | None = None

    def __enter__(self) -> CpuMeter:
        own = os.times()
        self._start = (
            time.monotonic(),
            group_cpu_seconds(self.groups),
            machine_busy_seconds(),
            own.user + own.system,
        )
        return self

    def __exit__(self, *_: object) -> None:
        assert self._start is not None
        at, before, busy, own_before = self._start
        after = group_cpu_seconds(self.groups)
        own = os.times()
        for key, value in after.items():
            self.totals[key] = self.totals.get(key, 0.0) + value - before.get(key, 0.0)
        self.totals["bench"] = self.totals.get("bench", 0.0) + own.user + own.system - own_before
        self.totals["machine"] = self.totals.get("machine", 0.0) + machine_busy_seconds() - busy
        self.wall += time.monotonic() - at
        self._start = None


# --- py-spy -------------------------------------------------------------------------------

_REPO_FRAME = f"({REPO}/"  # with --full-filenames


class Profiler:
    """py-spy ``record --format raw`` on a process and its children, until stopped."""

    def __init__(self, target: Process, out: Path) -> None:
        self.out = out
        self.popen = subprocess.Popen(
            [
                str(Path(sys.executable).with_name("py-spy")),
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
