"""Load on an API process: the environment of the benches that drive ``celeriac api``
with no worker running (ingest, usage), the servers under uvicorn, the load generator
(``bench.loadgen``, a process of its own) and the counters read around its measured phase.

The environment: a PostgreSQL database ``celeriac_bench`` (dropped and created), Redis db 7
as the broker and db 6 as the cache (flushed at the start and the end), a scratch var
directory, a migrated schema, a tenant ``bench`` with an API key and quotas too high to
refuse anything (the checks run, nothing is throttled), and the plugin registry rows the
pipeline names (no compute worker is needed to accept a job).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg
import redis
from sqlalchemy.orm import Session

from bench.kit.cli import BenchError
from bench.kit.env import (
    PG_SERVER,
    REDIS_SERVER,
    TENANT_SLUG,
    celeriac_command,
    create_tenant,
    drop_database,
    flush_redis,
    recreate_database,
    scratch_dir,
    sqlalchemy_url,
)
from bench.kit.machine import group_cpu_seconds, machine_ticks
from bench.kit.procs import HOST, REPO, Process
from celeriac.platform.db import create_db_engine
from celeriac.platform.jobs import pipelines
from celeriac.platform.jobs.pipelines import ANALYZER, DATASET, PluginInfo

DATABASE = "celeriac_bench"
BROKER_DB = 7
CACHE_DB = 6
STARTUP_TIMEOUT_SECONDS = 60.0


def database_url() -> str:
    return sqlalchemy_url(DATABASE)


def child_env(var_dir: Path) -> dict[str, str]:
    """The environment of every Celeriac process the bench starts: the caller's, minus any
    CELERIAC_ variable it has, plus the bench's own."""
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("CELERIAC_")}
    env.update(
        {
            "CELERIAC_VAR_DIR": str(var_dir),
            "CELERIAC_DATABASE_URL": database_url(),
            "CELERIAC_BROKER_URL": f"{REDIS_SERVER}/{BROKER_DB}",
            "CELERIAC_REDIS_URL": f"{REDIS_SERVER}/{CACHE_DB}",
            "CELERIAC_LOG__LEVEL": "WARNING",
        }
    )
    return env


@dataclass
class ApiEnv:
    var_dir: Path
    env: dict[str, str]
    api_key: str
    servers: list[Server] = field(default_factory=list)

    def celeriac(self, *args: str) -> str:
        return celeriac_command(self.env, self.var_dir, *args)

    def start_server(
        self, name: str, argv: list[str], port: int, extra: dict[str, str] | None = None
    ) -> Server:
        env = {**self.env, **(extra or {})}
        log = self.var_dir / f"{name}.log"
        server = Server(Process.start(name, argv, env, self.var_dir, log), f"http://{HOST}:{port}")
        self.servers.append(server)
        return server


@contextlib.contextmanager
def api_environment(var_root: Path | None = None) -> Iterator[ApiEnv]:
    """Build the environment; stop the servers and remove everything when the block ends."""
    var_dir = scratch_dir("celeriac-bench-", var_root)
    created = False
    api: ApiEnv | None = None
    try:
        print(f"setting up: database {DATABASE}, Redis dbs {BROKER_DB} and {CACHE_DB}, {var_dir}")
        recreate_database(DATABASE)
        created = True
        flush_redis(REDIS_SERVER, (BROKER_DB, CACHE_DB))
        env = child_env(var_dir)
        celeriac_command(env, var_dir, "migrate")
        api = ApiEnv(var_dir, env, create_tenant(env, var_dir, TENANT_SLUG))
        register_plugins()
        yield api
    finally:
        for server in api.servers if api else []:
            server.process.stop(10.0)
        with contextlib.suppress(Exception):
            flush_redis(REDIS_SERVER, (BROKER_DB, CACHE_DB))
        if created:
            with contextlib.suppress(Exception):
                drop_database(DATABASE)

        shutil.rmtree(var_dir, ignore_errors=True)


def register_plugins() -> None:
    """What a compute worker writes at start for the two plugins the bench pipeline uses."""
    engine = create_db_engine(database_url())
    try:
        with Session(engine) as session, session.begin():
            pipelines.register_plugins(
                session,
                [
                    PluginInfo(
                        kind=DATASET,
                        name="tabular",
                        version="bench",
                        parameters_schema={"type": "object"},
                        produces="table",
                    ),
                    PluginInfo(
                        kind=ANALYZER,
                        name="summary",
                        version="bench",
                        parameters_schema={"type": "object"},
                        accepts=("table",),
                    ),
                ],
            )
    finally:
        engine.dispose()


@dataclass
class Server:
    """A uvicorn server the bench started, and its URL."""

    process: Process
    url: str

    @property
    def name(self) -> str:
        return self.process.name

    def log_tail(self, lines: int = 20) -> str:
        return self.process.log_tail(lines)


def wait_healthy(servers: list[Server]) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS
    pending = list(servers)
    while pending:
        for server in list(pending):
            server.process.check_alive()
            try:
                if httpx.get(f"{server.url}/healthz", timeout=1).status_code == 200:
                    pending.remove(server)
            except httpx.TransportError:
                pass
        if pending and time.monotonic() > deadline:
            names = ", ".join(s.name for s in pending)
            raise BenchError(f"{names} did not answer /healthz within {STARTUP_TIMEOUT_SECONDS} s")
        if pending:
            time.sleep(0.1)


@dataclass
class Snapshot:
    at: float
    cpu_seconds: dict[str, float]
    machine: tuple[int, int]
    pg_sessions: int
    redis_connections: int


class Probe:
    """Reads the counters around a measured phase: CPU time per process group, the
    machine's busy time, PostgreSQL sessions opened on the bench database and Redis
    connections accepted (one connection of each is the probe's own, held throughout)."""

    def __init__(self, servers: list[Server]) -> None:
        self.groups = {s.process.pid: s.name for s in servers}
        self.pg = psycopg.connect(f"{PG_SERVER}/postgres", autocommit=True, connect_timeout=5)
        self.redis = redis.Redis.from_url(f"{REDIS_SERVER}/{CACHE_DB}", socket_connect_timeout=5)

    def snapshot(self) -> Snapshot:
        cpu = group_cpu_seconds(self.groups)
        row = self.pg.execute(
            "SELECT sessions FROM pg_stat_database WHERE datname = %s", (DATABASE,)
        ).fetchone()
        stats: Any = self.redis.info("stats")
        return Snapshot(
            at=time.monotonic(),
            cpu_seconds=cpu,
            machine=machine_ticks(),
            pg_sessions=int(row[0]) if row else 0,
            redis_connections=int(stats["total_connections_received"]),
        )

    def close(self) -> None:
        self.pg.close()
        self.redis.close()


def usage_between(before: Snapshot, after: Snapshot) -> dict[str, float]:
    """CPU per group in percent of one core, ``machine``: percent of all cores busy, and
    the sessions and connections opened meanwhile."""
    wall = after.at - before.at
    out = {
        name: 100 * (after.cpu_seconds.get(name, 0.0) - before.cpu_seconds.get(name, 0.0)) / wall
        for name in after.cpu_seconds
    }
    busy = after.machine[0] - before.machine[0]
    total = after.machine[1] - before.machine[1]
    out["machine"] = 100 * busy / total if total else 0.0
    out["pg_sessions"] = after.pg_sessions - before.pg_sessions
    out["redis_connections"] = after.redis_connections - before.redis_connections
    return out


@dataclass
class RunResult:
    target: str
    result: dict[str, Any]
    cpu: dict[str, float] = field(default_factory=dict)


def drive(
    server: Server, probe: Probe, key: str, args: argparse.Namespace, log_dir: Path
) -> RunResult:
    """One load-generator run against ``server``: warm-up, then the measured phase."""
    argv = [
        sys.executable,
        "-m",
        "bench.loadgen",
        "--url",
        f"{server.url}/v1/jobs",
        "--key",
        key,
        "--requests",
        str(args.requests),
        "--warmup",
        str(args.warmup),
        "--concurrency",
        str(args.concurrency),
        "--seconds",
        str(args.seconds),
        "--records",
        str(args.records),
        "--client",
        args.client,
        "--wait-for-go",
    ]
    log_path = log_dir / "loadgen.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
            cwd=REPO,
            start_new_session=True,
        )
    # Warm-up and measured phase are each bounded by --seconds plus the request timeout.
    watchdog = threading.Timer(2 * args.seconds + 60, process.kill)
    watchdog.start()
    try:
        assert process.stdout is not None
        before: Snapshot | None = None
        result: dict[str, Any] | None = None
        for line in process.stdout:
            message = json.loads(line)
            if message.get("event") == "measuring":
                before = probe.snapshot()
                assert process.stdin is not None
                process.stdin.write("go\n")
                process.stdin.flush()
            else:
                after = probe.snapshot()
                result = message
        process.wait()
    finally:
        watchdog.cancel()
        if process.poll() is None:
            process.kill()
            process.wait()
    if result is None or before is None:
        stderr = log_path.read_text(errors="replace")
        raise BenchError(
            f"the load generator exited with status {process.returncode}: {stderr[-2000:]}"
        )
    cpu = usage_between(before, after)
    cpu["loadgen"] = 100 * result["cpu_seconds"] / result["elapsed_seconds"]
    # Busy time no group accounts for (in percent of one core): other processes on the
    # machine, and the kernel's work not charged to any process.
    known = sum(cpu.get(name, 0.0) for name in (*probe.groups.values(), "postgres", "redis"))
    cpu["other"] = max(0.0, cpu["machine"] * (os.cpu_count() or 1) - known - cpu["loadgen"])
    if not server.process.alive():
        raise BenchError(f"{server.name} died during the run:\n{server.log_tail()}")
    return RunResult(server.name, result, cpu)
