"""A bench's own environment and the real Celeriac processes it runs in it.

:func:`environment` builds it and removes it again, also when the bench fails or is
stopped (Ctrl-C, SIGTERM, SIGHUP): a PostgreSQL database of the bench's own (dropped and
created), Redis db 2 (broker) and db 3 (cache and Celery result backend; other dbs when
asked), flushed at the start and the end, and a scratch directory (var dir: blobs and
keyring; the processes' logs; a bytecode cache). It migrates the schema and creates tenant
``bench`` with an API key, both with the ``celeriac`` command.

The lower-level pieces (:func:`scratch_dir`, :func:`recreate_database`,
:func:`flush_redis`, :func:`celeriac_command`, :func:`create_tenant`) serve the benches
that build a smaller environment of their own (ingest: no workers; console: seeded rows).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import httpx
import psycopg
import redis
from celery import Celery

from bench.kit.cli import BenchError, note
from bench.kit.procs import HOST, REPO, Process, api_argv, free_port, py_spy_dump
from celeriac.platform import dispatch, tasks
from celeriac.platform.cli import worker_argv
from celeriac.platform.queues import Pool
from celeriac.platform.settings import get_settings
from celeriac.platform.tasks import celery_config

BENCH_DIR = REPO / "bench"
SAMPLE = REPO / "tests" / "data" / "sample_1000.ndjson"
PG_SERVER = f"postgresql://postgres@{HOST}:5432"
REDIS_SERVER = f"redis://{HOST}:6379"
BROKER_DB = 2
RESULT_DB = 3
TENANT_SLUG = "bench"
POOLS = ("orchestration", "distribution", "compute")
STARTUP_TIMEOUT_SECONDS = 120.0
FINAL_STATES = ("succeeded", "partial", "failed", "cancelled")

# Scratch space for var directories (blobs, keyring, SQLite): the repository's var/, where
# `celeriac up` keeps its own. Not the system's temporary directory: on the machines this
# project runs on, creating a file in /tmp measured 220-870 us against 22-33 us under the
# work tree, on the same ext4 device, which made the filesystem the benchmark's bottleneck.
SCRATCH_ROOT = REPO / "var" / "bench"

# The bench tenant's quota overrides: limits so high that none refuses a request, so a
# bench measures the platform with its quota checks (they still run: one Redis round trip
# per request), not the plan's limits.
UNLIMITED_QUOTAS = (
    "requests_per_second=2000000000",
    "request_burst=2000000000",
    "max_running_jobs=2000000000",
    "jobs_per_month=2000000000",
    "max_payload_bytes=2000000000",
    "max_records_per_job=2000000000",
    "max_webhook_targets=2000000000",
)


def scratch_dir(prefix: str, root: Path | None = None) -> Path:
    """A new empty directory for one benchmark run (the caller removes it)."""
    base = root or SCRATCH_ROOT
    base.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=prefix, dir=base))


def sample_records() -> list[dict[str, Any]]:
    return [json.loads(line) for line in SAMPLE.read_text().splitlines() if line.strip()]


def flush_redis(server: str, dbs: Sequence[int]) -> None:
    """Empty the benchmark's own Redis dbs."""
    for db in dbs:
        client = redis.Redis.from_url(f"{server}/{db}", socket_connect_timeout=5)
        try:
            client.flushdb()
        finally:
            client.close()


def _admin_conn(server: str) -> psycopg.Connection[Any]:
    return psycopg.connect(f"{server}/postgres", autocommit=True, connect_timeout=5)


def recreate_database(database: str, server: str = PG_SERVER) -> None:
    with _admin_conn(server) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{database}"')


def drop_database(database: str, server: str = PG_SERVER) -> None:
    with _admin_conn(server) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


def sqlalchemy_url(database: str, server: str = PG_SERVER) -> str:
    """The ``CELERIAC_DATABASE_URL`` of a bench database (psycopg 3 driver)."""
    return server.replace("postgresql://", "postgresql+psycopg://", 1) + f"/{database}"


def celeriac_command(env: dict[str, str], cwd: Path, *args: str, timeout: float = 300) -> str:
    """Run a ``celeriac`` command to completion and return its stdout."""
    done = subprocess.run(
        [sys.executable, "-m", "celeriac.platform.cli", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if done.returncode != 0:
        raise BenchError(f"celeriac {' '.join(args)} failed: {done.stderr.strip()[-2000:]}")
    return done.stdout


def create_tenant(env: dict[str, str], cwd: Path, slug: str = TENANT_SLUG) -> str:
    """``celeriac admin create-tenant`` with quotas too high to refuse anything; returns
    the tenant's API key."""
    out = celeriac_command(env, cwd, "admin", "create-tenant", slug)
    keys = [
        ln.removeprefix("api_key=").strip() for ln in out.splitlines() if ln.startswith("api_key=")
    ]
    if not keys:
        raise BenchError(f"celeriac admin create-tenant printed no api_key= line: {out!r}")
    celeriac_command(env, cwd, "admin", "set-quotas", slug, *UNLIMITED_QUOTAS)
    return keys[0]


def bench_pythonpath(env: dict[str, str]) -> dict[str, str]:
    """``PYTHONPATH`` with the repository root first, so that a worker started with
    ``--include bench.<module>`` finds the bench's own tasks (the product never ships
    them)."""
    return {"PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))}


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


# --- the environment ------------------------------------------------------------------


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
        process = Process.start(name, argv, env, self.root, self.root / f"{name}.log")
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
                kind_name = kind.decode() if isinstance(kind, bytes) else str(kind)
                lines.append(f"  broker {key!r} {kind_name} {size if size is not None else ''}")
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
        return celeriac_command(self.child_env, self.root, *args)

    def start_api(
        self, extra_env: dict[str, str] | None = None, entry: str = "celeriac.platform.cli"
    ) -> Process:
        """``celeriac api`` on a free loopback port; returns once /readyz answers 200.
        ``entry``: a bench module run with ``-m`` in place of the CLI (one that patches
        something, then runs the CLI: bench.clear_blobs)."""
        port = free_port()
        if entry != "celeriac.platform.cli":
            extra_env = {**bench_pythonpath(self.child_env), **(extra_env or {})}
        process = self.start("api", api_argv(port, entry), extra_env)
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
        settings = get_settings()
        extra = bench_pythonpath(self.child_env)
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
        "CELERIAC_DATABASE_URL": sqlalchemy_url(database, PG_SERVER),
        "CELERIAC_BROKER_URL": f"{REDIS_SERVER}/{BROKER_DB}",
        "CELERIAC_REDIS_URL": f"{REDIS_SERVER}/{RESULT_DB}",
        "CELERIAC_LOG__LEVEL": log_level,
        **(extra or {}),
    }
    saved = {k: v for k, v in os.environ.items() if k.upper().startswith("CELERIAC_")}
    for key in saved:
        del os.environ[key]
    os.environ.update(settings)  # this process publishes (bare canvas) with the same config
    clear_process_caches()
    # A bytecode cache of the bench's own: with PYTHONDONTWRITEBYTECODE (as set on this
    # machine) every worker pool process would compile pandas/scikit-learn again, and
    # Celery kills a pool process that takes over 4 s to start.
    child_env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    child_env["PYTHONPYCACHEPREFIX"] = str(root / "pycache")
    env = Env(name, database, root, var_dir, child_env)
    created = False
    try:
        recreate_database(database, PG_SERVER)
        created = True
        _flush_redis()
        note(
            f"environment: database {database}, Redis dbs {BROKER_DB} (broker) and "
            f"{RESULT_DB} (cache, results), {root}"
        )
        env.celeriac("migrate")
        env.api_key = create_tenant(child_env, root)
        note("compiling the worker code into the bench's bytecode cache ...")
        prewarm(child_env, root)
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
                    drop_database(database, PG_SERVER)
            if keep_logs:
                shutil.rmtree(var_dir, ignore_errors=True)
                shutil.rmtree(root / "pycache", ignore_errors=True)
                note(f"logs kept in {root}")
            else:
                shutil.rmtree(root, ignore_errors=True)
            clear_process_caches()
            for key in settings:
                os.environ.pop(key, None)
            os.environ.update(saved)
        finally:
            signal.signal(signal.SIGINT, previous)
            signal.signal(signal.SIGTERM, previous_term)


def _flush_redis() -> None:
    flush_redis(REDIS_SERVER, (BROKER_DB, RESULT_DB))


def clear_process_caches() -> None:
    for cached in (get_settings, dispatch.get_dispatcher):
        cached.cache_clear()
    tasks.reset_default_publisher()
    _client_app.cache_clear()


def prewarm(env: dict[str, str], cwd: Path) -> None:
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
    app = Celery("celeriac-bench", set_as_current=False)
    app.conf.update(celery_config(get_settings()))
    return app
