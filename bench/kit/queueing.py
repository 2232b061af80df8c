"""What ``bench.tenants`` and ``bench.fairness`` share: their environment, the compute
worker they start, the no-op task they publish and how they read its start times.

Both measure the queueing layer with a real Celery compute worker (prefork, two processes,
``-O fair``, prefetch 1, late acks: what ``celeriac worker --pool compute`` runs) on the
real Redis broker. The task is ``celeriac.compute.noop`` (bench/noop.py, loaded with
``--include bench.noop``; the product does not ship it): it logs one JSON line, ``noop
started``, with the delay from its ``sent_at`` argument (the publisher's ``time.time()``) to
its start, and then sleeps ``work_ms``. The bench publishes, reads those lines back from the
worker's log and computes each task's start time as ``sent_at + delay_ms``.

The environment is the bench's own: Redis db 4 (broker) and db 5 (results), flushed at
the start, between runs and at the end; a temporary directory with a migrated SQLite
database (a compute worker writes the plugin registry into it when it is ready), the
worker logs and a bytecode cache. Every worker runs in a session of its own and is
stopped, with its children, when the bench ends, fails or is interrupted.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
from redis import Redis

from bench.kit.cli import note
from bench.kit.env import bench_pythonpath, clear_process_caches, prewarm, scratch_dir
from bench.kit.machine import machine_busy_seconds, process_cpu_seconds
from bench.kit.procs import Process, children
from bench.noop import NOOP
from celeriac.platform import migrate
from celeriac.platform.tasks import Publication, default_publisher, publisher_app

HOST = "127.0.0.1"
REDIS_SERVER = f"redis://{HOST}:6379"
BROKER_DB = 4
RESULT_DB = 5
POOL_QUEUE = "compute"
HOSTNAME = "compute@bench"
CONCURRENCY = 2
STARTUP_TIMEOUT_SECONDS = 120.0


# --- the worker ---------------------------------------------------------------------------


WORKER_APP = "celeriac.workers.celery_app"
# The same app with the band-first dispatcher of before issue 13 (bench/band_first.py).
BAND_FIRST_APP = "bench.band_first_app"


def worker_argv(queues: Sequence[str], app: str = WORKER_APP) -> list[str]:
    """``celeriac worker --pool compute --concurrency 2`` (see ``platform/cli.py``) with the
    bench's queues and a fixed host name, without ``--max-tasks-per-child``: replacing a
    child every 200 no-op tasks would measure plugin loading, not queueing."""
    return [
        sys.executable,
        "-m",
        "celery",
        "-A",
        app,
        "worker",
        "--pool",
        "prefork",
        "--concurrency",
        str(CONCURRENCY),
        "-O",
        "fair",
        "--prefetch-multiplier",
        "1",
        "--queues",
        ",".join(queues),
        "--hostname",
        HOSTNAME,
        "--without-mingle",
        "--without-gossip",
        "--include",
        "bench.noop",
    ]


@dataclass
class Worker:
    name: str
    queues: Sequence[str]
    env: dict[str, str]
    cwd: Path
    log_path: Path
    app: str = WORKER_APP
    process: Process | None = None

    def start(self) -> None:
        argv = worker_argv(self.queues, self.app)
        self.process = Process.start(self.name, argv, self.env, self.cwd, self.log_path, False)

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def check_alive(self) -> None:
        if self.process is not None:
            self.process.check_alive()

    def stop(self, grace: float = 20.0) -> None:
        process, self.process = self.process, None
        if process is not None:
            process.stop(grace)

    def log_tail(self, lines: int = 15) -> str:
        return self.process.log_tail(lines) if self.process is not None else ""


@dataclass
class Start:
    task_id: str
    delay_ms: float


@dataclass
class WorkerLog:
    """Reads a worker's JSON-lines log as it grows: the ``noop started`` lines by label,
    the run time of each task Celery reports as succeeded, and warnings or worse."""

    path: Path
    starts: dict[str, Start] = field(default_factory=dict)
    runtimes: dict[str, float] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    _offset: int = 0
    _partial: bytes = b""

    def poll(self) -> None:
        try:
            with self.path.open("rb") as log:
                log.seek(self._offset)
                chunk = log.read()
        except FileNotFoundError:
            return
        self._offset += len(chunk)
        lines = (self._partial + chunk).split(b"\n")
        self._partial = lines.pop()
        for line in lines:
            if b'"noop started"' in line:
                record = json.loads(line)
                self.starts[record["label"]] = Start(record["task_id"], record["delay_ms"])
            elif b"succeeded in" in line and line.startswith(b"{"):
                record = json.loads(line)
                data = record.get("data") or {}
                if "id" in data and "runtime" in data:
                    self.runtimes[data["id"]] = float(data["runtime"])
            elif line.startswith(b"{") and any(
                f'"level": "{level}"'.encode() in line for level in ("WARNING", "ERROR", "CRITICAL")
            ):
                self.problems.append(json.loads(line).get("message", "")[:300])

    def count(self, prefix: str) -> int:
        return sum(1 for label in self.starts if label.startswith(prefix))


def wait_for(
    condition: Callable[[], bool], timeout: float, what: str, worker: Worker, log: WorkerLog
) -> bool:
    """Poll the log until ``condition`` holds; False at the deadline. Raises when the worker
    died meanwhile."""
    deadline = time.monotonic() + timeout
    while True:
        log.poll()
        if condition():
            return True
        worker.check_alive()
        if time.monotonic() > deadline:
            note(f"  timed out after {timeout:.0f} s waiting for {what}")
            return False
        time.sleep(0.05)


# --- publishing ---------------------------------------------------------------------------


def noop_kwargs(tenant: str, label: str, sent_at: float, work_ms: int) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"tenant_id": tenant, "label": label, "sent_at": sent_at}
    if work_ms:
        kwargs["work_ms"] = work_ms
    return kwargs


@dataclass
class Publisher:
    """Publishes no-op tasks and remembers when each was sent."""

    sent_at: dict[str, float] = field(default_factory=dict)
    task_ids: dict[str, str] = field(default_factory=dict)

    def fair(self, tenant: str, label: str, work_ms: int = 0, band: str = "normal") -> None:
        """The product's path: the tenant's queue, then the fair dispatcher's release (the
        product's dispatcher or the band-first one, whichever ``use_design`` chose)."""
        sent = time.time()
        self.sent_at[label] = sent
        kwargs = noop_kwargs(tenant, label, sent, work_ms)
        self.task_ids[label] = default_publisher().publish(Publication(NOOP, band, tenant, kwargs))

    def direct(self, queue: str, tenant: str, label: str, work_ms: int = 0) -> None:
        """Straight to a broker queue by name, no dispatcher."""
        sent = time.time()
        self.sent_at[label] = sent
        result = publisher_app().send_task(
            NOOP, kwargs=noop_kwargs(tenant, label, sent, work_ms), queue=queue
        )
        self.task_ids[label] = str(result.id)

    def started_at(self, log: WorkerLog, label: str) -> float:
        return self.sent_at[label] + log.starts[label].delay_ms / 1000


# --- measuring ----------------------------------------------------------------------------


@dataclass
class WorkerReading:
    """CPU seconds of the worker's main process, of its pool processes, of Redis, of this
    process and of the whole machine, and Redis' per-command call counts and time, at one
    instant. Redis' command statistics
    are server-wide: anything else using this Redis meanwhile is counted too."""

    at: float
    main: float
    children: float
    redis: float
    bench: float
    machine: float
    commands: dict[str, tuple[int, int]]

    @classmethod
    def take(cls, worker: Worker, client: Redis) -> WorkerReading:
        info = client.info("commandstats")
        commands = {
            name.removeprefix("cmdstat_"): (int(v["calls"]), int(v["usec"]))
            for name, v in info.items()
        }
        redis_pid = int(client.info("server")["process_id"])
        return cls(
            at=time.monotonic(),
            main=process_cpu_seconds(worker.pid),
            children=sum(process_cpu_seconds(child) for child in children(worker.pid)),
            redis=process_cpu_seconds(redis_pid),
            bench=process_cpu_seconds(os.getpid()),
            machine=machine_busy_seconds(),
            commands=commands,
        )


@dataclass
class Usage:
    """What happened between two probes: CPU as a percentage of one core, and per Redis
    command the calls and the microseconds per call."""

    seconds: float
    main_pct: float
    children_pct: float
    redis_pct: float
    bench_pct: float
    other_pct: float
    commands: dict[str, tuple[int, float]]

    @classmethod
    def between(cls, before: WorkerReading, after: WorkerReading) -> Usage:
        seconds = max(after.at - before.at, 1e-9)
        commands = {}
        for name, (calls, usec) in after.commands.items():
            calls0, usec0 = before.commands.get(name, (0, 0))
            if calls > calls0:
                commands[name] = (calls - calls0, (usec - usec0) / (calls - calls0))
        main = after.main - before.main
        children = after.children - before.children
        redis_cpu = after.redis - before.redis
        bench = after.bench - before.bench
        other = after.machine - before.machine - main - children - redis_cpu - bench
        return cls(
            seconds=seconds,
            main_pct=100 * main / seconds,
            children_pct=100 * children / seconds,
            redis_pct=100 * redis_cpu / seconds,
            bench_pct=100 * bench / seconds,
            other_pct=100 * max(other, 0.0) / seconds,
            commands=commands,
        )

    def cpu_ms_per_task(self, tasks: int) -> float:
        """Worker (main and pool processes) plus Redis CPU time per task, in ms: unlike
        tasks/s, barely moved by what else the machine runs."""
        busy = (self.main_pct + self.children_pct + self.redis_pct) / 100 * self.seconds
        return 1000 * busy / tasks if tasks else float("nan")

    def per_task(self, command: str, tasks: int) -> tuple[float, float]:
        """Calls per task and microseconds per call of one Redis command."""
        calls, usec = self.commands.get(command, (0, 0.0))
        return (calls / tasks if tasks else float("nan"), usec)


# --- the environment ----------------------------------------------------------------------


@dataclass
class BenchEnv:
    root: Path
    child_env: dict[str, str]
    broker: redis.Redis
    results: redis.Redis
    workers: list[Worker] = field(default_factory=list)

    def flush(self) -> None:
        self.broker.flushdb()
        self.results.flushdb()

    def start_worker(self, name: str, queues: Sequence[str], app: str = WORKER_APP) -> Worker:
        env = self.child_env | bench_pythonpath(self.child_env)  # bench.noop, band-first
        worker = Worker(name, queues, env, self.root, self.root / f"{name}.log", app)
        self.workers.append(worker)
        worker.start()
        return worker

    def stop_workers(self) -> None:
        for worker in self.workers:
            worker.stop()
        self.workers.clear()


@contextlib.contextmanager
def bench_env(name: str) -> Iterator[BenchEnv]:
    """The bench's own settings (also in this process's environment, for ``publish``),
    Redis dbs, migrated SQLite database and temporary directory, all removed at the end."""
    root = scratch_dir(f"celeriac-bench-{name}-")
    var_dir = root / "var"
    var_dir.mkdir()
    database_url = f"sqlite:///{var_dir / 'celeriac.db'}"
    settings = {
        "CELERIAC_VAR_DIR": str(var_dir),
        "CELERIAC_DATABASE_URL": database_url,
        "CELERIAC_BROKER_URL": f"{REDIS_SERVER}/{BROKER_DB}",
        "CELERIAC_REDIS_URL": f"{REDIS_SERVER}/{RESULT_DB}",
        # INFO: the "noop started" lines are what the bench reads.
        "CELERIAC_LOG__LEVEL": "INFO",
    }
    saved = {k: v for k, v in os.environ.items() if k.upper().startswith("CELERIAC_")}
    for key in saved:
        del os.environ[key]
    os.environ.update(settings)
    clear_process_caches()
    child_env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    child_env["PYTHONPYCACHEPREFIX"] = str(root / "pycache")
    broker = redis.Redis.from_url(settings["CELERIAC_BROKER_URL"], socket_timeout=30)
    results = redis.Redis.from_url(settings["CELERIAC_REDIS_URL"], socket_timeout=30)
    bench = BenchEnv(root, child_env, broker, results)
    try:
        bench.flush()
        migrate.upgrade(database_url)
        note("compiling the worker's code into the bench's bytecode cache ...")
        prewarm(child_env, root)
        yield bench
    finally:
        bench.stop_workers()
        with contextlib.suppress(redis.RedisError):
            bench.flush()
        broker.close()
        results.close()
        clear_process_caches()
        for key in settings:
            os.environ.pop(key, None)
        os.environ.update(saved)
        shutil.rmtree(root, ignore_errors=True)
