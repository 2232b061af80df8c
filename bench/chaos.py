"""The fault suite (``make chaos``; not part of ``make test``): real processes, real faults.

It starts a PostgreSQL cluster of its own (``pg_createcluster`` on a free loopback port, so
that stopping it harms no one else on the machine) and a Redis server of its own (no
persistence, as ElastiCache), then through bench/kit/env.py the API, the three pools,
beat and a webhook receiver in this process. Each named scenario submits jobs of the same
input, injects its fault in a bounded loop, and waits for every job to end. A job is
*correct* when its analyses equal those of the same input run before any fault.

Per scenario it prints: jobs submitted / final / correct / lost (not final by the
deadline) / duplicated usage rows / webhooks ok, duplicate, missing / seconds from the
end of the fault until every job was final / the platform's RSS at start and end.
Targets: 0 lost, 0 wrong, 0 duplicated usage, 0 missing webhooks, every job final within
stall + reconcile interval + 30 s after the fault ends. Exit 0 when all are met.

    .venv/bin/python -m bench.chaos [--scenario NAME ...] [--list]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx

from bench.kit import env as harness
from bench.kit.cli import BenchError, install_signal_handlers, note, run_main
from bench.kit.env import FINAL_STATES, Env, environment, sample_records
from bench.kit.procs import HOST, Process, api_argv, free_port
from celeriac.platform.cli import worker_argv
from celeriac.platform.queues import Pool
from celeriac.platform.settings import get_settings

PG_VERSION_DIR = Path("/usr/lib/postgresql")
CLUSTER = "celeriac-chaos"
# Small so that a lost job is found in seconds: the bound on recovery is
# stall + reconcile interval + 30 s after the fault ends.
STALL_SECONDS = 8.0
RECONCILE_SECONDS = 2.0
RECOVERY_BOUND = STALL_SECONDS + RECONCILE_SECONDS + 30.0
RECORDS = sample_records()[:200]
# workers/celery_app.TENANT_DESTRUCTION_INTERVAL_SECONDS (not imported: the suite
# imports no worker code).
TENANT_DESTRUCTION_SECONDS = 60.0
PIPELINE = {"datasets": [{"name": "tabular"}], "analyzers": [{"name": "summary"}]}


# --- services of the suite's own --------------------------------------------------------


class PostgresCluster:
    """A throwaway cluster (pg_createcluster), trust auth on 127.0.0.1 only."""

    def __init__(self) -> None:
        versions = sorted(p.name for p in PG_VERSION_DIR.iterdir() if p.name.isdigit())
        if not versions:
            raise BenchError("no PostgreSQL server under /usr/lib/postgresql")
        self.version = versions[-1]
        self.port = free_port()
        subprocess.run(
            ["pg_dropcluster", "--stop", self.version, CLUSTER], capture_output=True, check=False
        )
        try:
            subprocess.run(
                [
                    "pg_createcluster",
                    self.version,
                    CLUSTER,
                    "-p",
                    str(self.port),
                    "--",
                    "--auth=trust",
                ],
                capture_output=True,
                check=True,
            )
            # Debian's postgresql.conf reads conf.d/ last (pg_conftool does not quote).
            conf = Path("/etc/postgresql") / self.version / CLUSTER / "conf.d" / "chaos.conf"
            conf.write_text(f"listen_addresses = '{HOST}'\nfsync = off\n")
            self.start()
        except BaseException:
            self.drop()
            raise

    @property
    def url(self) -> str:
        return f"postgresql://postgres@{HOST}:{self.port}"

    def _ctl(self, action: str) -> None:
        subprocess.run(
            ["pg_ctlcluster", self.version, CLUSTER, action], capture_output=True, check=True
        )

    def start(self) -> None:
        self._ctl("start")
        deadline = time.monotonic() + 30
        while (
            subprocess.run(
                ["pg_isready", "-h", HOST, "-p", str(self.port)], capture_output=True, check=False
            ).returncode
            != 0
        ):
            if time.monotonic() > deadline:
                raise BenchError("the chaos PostgreSQL cluster did not start")
            time.sleep(0.2)

    def stop(self) -> None:
        self._ctl("stop")

    def drop(self) -> None:
        subprocess.run(
            ["pg_dropcluster", "--stop", self.version, CLUSTER], capture_output=True, check=False
        )


class RedisServer:
    """redis-server without persistence: a restart loses every queued message."""

    def __init__(self) -> None:
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                HOST,
                "--save",
                "",
                "--appendonly",
                "no",
                "--maxmemory-policy",
                "noeviction",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + 10
        ping = ["redis-cli", "-p", str(self.port), "ping"]
        while subprocess.run(ping, capture_output=True, check=False).stdout.strip() != b"PONG":
            if time.monotonic() > deadline:
                raise BenchError("the chaos Redis did not start")
            time.sleep(0.1)

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None


class Receiver:
    """A webhook receiver: counts deliveries per message id. It answers 204, or, as a
    scenario sets it, 503 with Retry-After (nothing delivered) or is absent (its port
    closed: connection refused) until :meth:`reopen`."""

    def __init__(self) -> None:
        self.deliveries: Counter[str] = Counter()
        self.refused: Counter[str] = Counter()  # 503 answers per message id
        self.jobs: dict[str, str] = {}
        self.unavailable = False
        self.port = 0
        self.server: ThreadingHTTPServer | None = None
        self.reopen()

    def reopen(self) -> None:
        received = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                message_id = self.headers.get("webhook-id", "")
                with contextlib.suppress(ValueError, KeyError):
                    received.jobs[message_id] = json.loads(body)["data"]["job_id"]
                if received.unavailable:
                    received.refused[message_id] += 1
                    self.send_response(503)
                    self.send_header("Retry-After", "2")
                    self.end_headers()
                    return
                received.deliveries[message_id] += 1
                self.send_response(204)
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                pass

        # The same port again (HTTPServer sets SO_REUSEADDR): the registered URL stays.
        self.server = ThreadingHTTPServer((HOST, self.port), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}/"

    def close(self) -> None:
        """Absent: the port refuses connections."""
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    def for_jobs(self, job_ids: set[str]) -> tuple[int, int, int]:
        """Webhooks ok (delivered once), duplicate (more than once), missing (never)."""
        per_job: Counter[str] = Counter()
        for message_id, count in self.deliveries.items():
            job = self.jobs.get(message_id)
            if job in job_ids:
                per_job[job] += count
        ok = sum(1 for j in job_ids if per_job[j] == 1)
        duplicate = sum(1 for j in job_ids if per_job[j] > 1)
        return ok, duplicate, len(job_ids) - ok - duplicate


# --- the platform ---------------------------------------------------------------------


@dataclass
class Platform:
    env: Env
    receiver: Receiver
    pg: PostgresCluster
    redis: RedisServer
    api: Process | None = None
    workers: dict[str, Process] = field(default_factory=dict)
    beat: Process | None = None
    baseline: dict[str, Any] | None = None
    # The API key of each job submitted for a tenant other than the bench's own.
    job_keys: dict[str, str] = field(default_factory=dict)
    _admin_token: str = ""

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.env.api_key}"}

    @property
    def admin_headers(self) -> dict[str, str]:
        if not self._admin_token:
            self._admin_token = self.env.celeriac("admin", "token", "--ttl", "86400").strip()
        return {"Authorization": f"Bearer {self._admin_token}"}

    def new_tenant(self, slug: str, *quotas: str) -> tuple[str, str]:
        """A tenant of its own (unlimited quotas but ``quotas``, a webhook to the receiver):
        (id, API key)."""
        out = self.env.celeriac("admin", "create-tenant", slug)
        fields = dict(ln.split("=", 1) for ln in out.splitlines() if "=" in ln)
        names = {q.split("=", 1)[0] for q in quotas}
        unlimited = [q for q in harness.UNLIMITED_QUOTAS if q.split("=", 1)[0] not in names]
        self.env.celeriac("admin", "set-quotas", slug, *unlimited, *quotas)
        hook = httpx.post(
            f"{self.env.api_url}/v1/webhooks",
            headers={"Authorization": f"Bearer {fields['api_key']}"},
            json={"url": self.receiver.url, "event_types": ["job.*"]},
            timeout=30,
        )
        if hook.status_code != 201:
            raise BenchError(f"registering the receiver for {slug} failed: {hook.text}")
        return fields["tenant_id"].strip(), fields["api_key"].strip()

    def start(self) -> None:
        self.api = self.env.start_api()
        self.workers = self.env.start_workers()
        self.beat = self.env.start("beat", [sys.executable, "-m", "celeriac.platform.cli", "beat"])

    def restart_api(self) -> None:
        assert self.api is not None
        self.env.stop(self.api)
        port = int(self.env.api_url.rsplit(":", 1)[1])
        self.api = self.env.start("api", api_argv(port))

    def restart_worker(self, pool: str, how: signal.Signals) -> None:
        process = self.workers[pool]
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, how)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.popen.wait(30)
        self.env.stop(process)
        argv = worker_argv(get_settings(), Pool(pool), None)
        self.workers[pool] = self.env.start(f"worker-{pool}", argv)

    def rss_mib(self) -> float:
        total = 0
        for process in self.env.processes:
            for pid in (process.pid, *process.children()):
                with contextlib.suppress(OSError, ValueError, IndexError):
                    status = Path(f"/proc/{pid}/status").read_text()
                    line = next(ln for ln in status.splitlines() if ln.startswith("VmRSS:"))
                    total += int(line.split()[1])
        return total / 1024

    def submit(
        self, key: str | None = None, timeout: float = 120.0, api_key: str | None = None
    ) -> str:
        """One job, retried (same Idempotency-Key) until the API accepts it."""
        key = key or uuid.uuid4().hex
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else self.headers
        body = {"pipeline": PIPELINE, "records": RECORDS}
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(httpx.TransportError):
                answer = httpx.post(
                    f"{self.env.api_url}/v1/jobs",
                    json=body,
                    timeout=10,
                    headers={**headers, "Idempotency-Key": key},
                )
                if answer.status_code == 202:
                    job_id = str(answer.json()["id"])
                    if api_key:
                        self.job_keys[job_id] = api_key
                    return job_id
                if answer.status_code == 500:
                    raise BenchError(f"a submission answered 500: {answer.text}")
            if time.monotonic() > deadline:
                raise BenchError("a submission was not accepted in time")
            time.sleep(0.5)

    def states(self, job_ids: set[str]) -> dict[str, str]:
        with self.env.db() as conn:
            rows = conn.execute(
                "SELECT id::text, state FROM jobs WHERE id::text = ANY(%s)", (list(job_ids),)
            ).fetchall()
        return {row[0]: row[1] for row in rows}

    def wait_final(self, job_ids: set[str], deadline: float) -> float | None:
        """Seconds until every job was final, or None when the deadline passed first."""
        started = time.monotonic()
        while time.monotonic() < deadline:
            with contextlib.suppress(Exception):
                states = self.states(job_ids)
                if len(states) == len(job_ids) and all(s in FINAL_STATES for s in states.values()):
                    return time.monotonic() - started
            time.sleep(0.5)
        return None

    def analyses(self, job_id: str) -> Any:
        key = self.job_keys.get(job_id)
        headers = {"Authorization": f"Bearer {key}"} if key else self.headers
        answer = httpx.get(
            f"{self.env.api_url}/v1/jobs/{job_id}/results", headers=headers, timeout=30
        )
        return answer.json().get("analyses") if answer.status_code == 200 else None

    def duplicated_usage(self) -> int:
        """jobs.submitted rows beyond one per job, and rows of jobs that do not exist."""
        with self.env.db() as conn:
            rows = conn.execute(
                "SELECT properties->>'job_id', count(*) FROM usage_records "
                "WHERE metric = 'jobs.submitted' GROUP BY 1"
            ).fetchall()
            known = {r[0] for r in conn.execute("SELECT id::text FROM jobs").fetchall()}
        return int(sum(count - 1 for _, count in rows) + sum(1 for j, _ in rows if j not in known))


# --- scenarios ------------------------------------------------------------------------


@dataclass
class Outcome:
    name: str
    submitted: int = 0
    final: int = 0
    correct: int = 0
    lost: int = 0
    duplicated_usage: int = 0
    webhooks: tuple[int, int, int] = (0, 0, 0)
    recover_seconds: float | None = None
    webhook_seconds: float | None = None  # until every webhook was delivered
    rss_start: float = 0.0
    rss_end: float = 0.0
    notes: list[str] = field(default_factory=list)
    job_ids: list[str] = field(default_factory=list)  # jobs a fault submitted itself
    # Jobs the fault judged itself (a deleted tenant's: cancelled, no result, no webhook):
    # True when its outcome was right. They count as submitted, final and lost as any job.
    judged: dict[str, bool] = field(default_factory=dict)
    # Checks run once every job is final (what a fault must not have left behind).
    after: list[Callable[[], None]] = field(default_factory=list)

    def met(self) -> bool:
        return (
            self.lost == 0
            and self.correct == self.submitted
            and self.duplicated_usage == 0
            and self.webhooks[2] == 0
            and self.recover_seconds is not None
            and self.recover_seconds <= RECOVERY_BOUND
            and not any(n.startswith("FAIL") for n in self.notes)
        )


Fault = Callable[[Platform, Outcome], None]


def _run(platform: Platform, name: str, jobs: int, fault: Fault) -> Outcome:
    """``jobs`` submitted one every half second from a thread while ``fault`` runs (so that
    it meets jobs in every stage); then every job must end, correct, within the bound."""
    outcome = Outcome(name, rss_start=platform.rss_mib())
    before = platform.duplicated_usage()
    submitted: list[str] = []
    failures: list[BaseException] = []

    def submitter() -> None:
        try:
            for _ in range(jobs):
                submitted.append(platform.submit(timeout=240))
                time.sleep(0.5)
        except BaseException as exc:  # reported in the table, not lost in a thread
            failures.append(exc)

    thread = threading.Thread(target=submitter, daemon=True)
    thread.start()
    time.sleep(1.0)  # the first jobs are in flight when the fault begins
    fault(platform, outcome)
    fault_ended = time.monotonic()
    thread.join(300)
    outcome.notes += [f"FAIL: submitting: {exc}" for exc in failures]
    job_ids = set(submitted) | set(outcome.job_ids) | set(outcome.judged)
    outcome.submitted = len(job_ids)
    took = platform.wait_final(job_ids, fault_ended + RECOVERY_BOUND + 60)
    # From the end of the fault (the wait began when the last submission was accepted).
    outcome.recover_seconds = None if took is None else time.monotonic() - fault_ended
    states = platform.states(job_ids)
    outcome.final = sum(1 for s in states.values() if s in FINAL_STATES)
    outcome.lost = outcome.submitted - outcome.final
    scored = job_ids - set(outcome.judged)
    outcome.correct = sum(1 for j in scored if platform.analyses(j) == platform.baseline)
    outcome.correct += sum(outcome.judged.values())
    with platform.env.db() as conn:
        for job_id, state, error in conn.execute(
            "SELECT id::text, state, error FROM jobs WHERE id::text = ANY(%s) "
            "AND state <> 'succeeded'",
            (list(scored),),
        ).fetchall():
            outcome.notes.append(f"job {job_id}: {state}: {error}")
    outcome.duplicated_usage = platform.duplicated_usage() - before
    # Webhooks may still be on their way for the last jobs (the retry schedule is a few
    # seconds in this suite): give them the bound too.
    deadline = time.monotonic() + RECOVERY_BOUND
    while time.monotonic() < deadline and platform.receiver.for_jobs(scored)[2]:
        time.sleep(0.5)
    outcome.webhooks = platform.receiver.for_jobs(scored)
    if outcome.webhooks[2] == 0:
        outcome.webhook_seconds = time.monotonic() - fault_ended
    for check in outcome.after:
        check()
    outcome.rss_end = platform.rss_mib()
    return outcome


def compute_sigkill(platform: Platform) -> Outcome:
    """The compute pool's children SIGKILLed, 6 times, 2 s apart, while jobs run."""

    def fault(p: Platform, _outcome: Outcome) -> None:
        for _ in range(6):
            for pid in p.workers["compute"].children():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(2)

    return _run(platform, "compute-sigkill", 12, fault)


def orchestration_distribution_killed(platform: Platform) -> Outcome:
    """Orchestration and distribution SIGKILLed and restarted, twice."""

    def fault(p: Platform, _outcome: Outcome) -> None:
        for _ in range(2):
            for pool in ("orchestration", "distribution"):
                p.restart_worker(pool, signal.SIGKILL)
            time.sleep(3)
        p.env.wait_workers_ready(p.workers)

    return _run(platform, "orch-dist-sigkill", 12, fault)


def worker_sigterm(platform: Platform) -> Outcome:
    """SIGTERM of each worker in turn (a Kubernetes scale-down), each restarted."""

    def fault(p: Platform, _outcome: Outcome) -> None:
        for pool in ("orchestration", "distribution", "compute"):
            p.restart_worker(pool, signal.SIGTERM)
        p.env.wait_workers_ready(p.workers)

    return _run(platform, "worker-sigterm", 9, fault)


def broker_restart(platform: Platform) -> Outcome:
    """Redis (broker, cache, results) killed and restarted empty: queued messages lost."""

    def fault(p: Platform, _outcome: Outcome) -> None:
        p.redis.kill()
        time.sleep(3)
        p.redis.start()

    return _run(platform, "broker-restart", 10, fault)


def postgres_down(platform: Platform) -> Outcome:
    """PostgreSQL stopped 15 s; the API is probed meanwhile: 503, never 500."""

    def fault(p: Platform, outcome: Outcome) -> None:
        p.pg.stop()
        statuses: Counter[int] = Counter()
        until = time.monotonic() + 15
        while time.monotonic() < until:
            with contextlib.suppress(httpx.TransportError):
                answer = httpx.get(f"{p.env.api_url}/v1/jobs", headers=p.headers, timeout=5)
                statuses[answer.status_code] += 1
            time.sleep(0.5)
        p.pg.start()
        outcome.notes.append(f"answers while down: {dict(statuses)}")
        if statuses.get(500):
            outcome.notes.append("FAIL: 500 while PostgreSQL was down")

    return _run(platform, "postgres-stopped-15s", 8, fault)


def api_sigkill_idempotent_clients(platform: Platform) -> Outcome:
    """8 clients submit 3 jobs each with Idempotency-Key retries; the API is SIGKILLed
    and restarted 3 times meanwhile. Each key must end as exactly one job."""

    def fault(p: Platform, outcome: Outcome) -> None:
        ids: list[str] = []
        lock = threading.Lock()

        def client(n: int) -> None:
            for k in range(3):
                job = p.submit(key=f"chaos-{n}-{k}-{uuid.uuid4().hex[:6]}", timeout=240)
                with lock:
                    ids.append(job)

        threads = [threading.Thread(target=client, args=(n,)) for n in range(8)]
        for thread in threads:
            thread.start()
        for _ in range(3):
            time.sleep(1.5)
            assert p.api is not None
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.api.pid, signal.SIGKILL)
            p.restart_api()
        for thread in threads:
            thread.join(300)
        outcome.job_ids = ids
        if len(set(ids)) != 24:
            outcome.notes.append(f"FAIL: {len(set(ids))} distinct jobs for 24 keys")

    return _run(platform, "api-sigkill-idempotency", 0, fault)


def tenant_suspended(platform: Platform) -> Outcome:
    """A second tenant's 8 queued jobs; the tenant suspended for 15 s, then resumed. No job
    of it may start while it is suspended; all must then succeed, and the bench tenant's
    jobs run on meanwhile."""

    def fault(p: Platform, outcome: Outcome) -> None:
        # One running job at a time and 8 submitted at once: most are queued when the
        # suspension comes (submitted one by one, they ended as fast as they came).
        tenant_id, key = p.new_tenant(f"chaos-held-{uuid.uuid4().hex[:6]}", "max_running_jobs=1")
        held = _submit_at_once(p, key, 8)
        answer = httpx.patch(
            f"{p.env.api_url}/v1/admin/tenants/{tenant_id}",
            headers=p.admin_headers,
            json={"status": "suspended"},
            timeout=30,
        )
        if answer.status_code != 200:
            outcome.notes.append(f"FAIL: suspending answered {answer.status_code}")
        suspended_at = _db_now(p)
        queued_at_suspension = _queued(p, held)
        if not queued_at_suspension:
            outcome.notes.append("FAIL: no job was queued at the suspension (nothing tested)")
        time.sleep(15)
        # Jobs already started finish; none may start after the suspension (1 s for every
        # process to see it, as the API documents "within seconds").
        with p.env.db() as conn:
            started = conn.execute(
                "SELECT count(*) FROM jobs WHERE id::text = ANY(%s) "
                "AND started_at > %s + interval '1 second'",
                (held, suspended_at),
            ).fetchone()
        outcome.notes.append(
            f"suspended tenant: {len(held)} jobs, {queued_at_suspension} queued at the "
            f"suspension, {_queued(p, held)} still queued 15 s later, "
            f"{started[0] if started else '?'} started while suspended"
        )
        if started is None or started[0]:
            outcome.notes.append("FAIL: a job of the suspended tenant started")
        answer = httpx.patch(
            f"{p.env.api_url}/v1/admin/tenants/{tenant_id}",
            headers=p.admin_headers,
            json={"status": "active"},
            timeout=30,
        )
        if answer.status_code != 200:
            outcome.notes.append(f"FAIL: resuming answered {answer.status_code}")
        outcome.job_ids = held

    return _run(platform, "tenant-suspended", 8, fault)


def tenant_deleted(platform: Platform) -> Outcome:
    """A second tenant's 8 queued jobs; the tenant deleted. Every job of it ends
    ``cancelled`` (or had succeeded before), nothing of it is written or billed after the
    delete, and the bench tenant's jobs run on meanwhile."""

    def fault(p: Platform, outcome: Outcome) -> None:
        tenant_id, key = p.new_tenant(f"chaos-doomed-{uuid.uuid4().hex[:6]}", "max_running_jobs=2")
        doomed = [p.submit(api_key=key) for _ in range(8)]
        answer = httpx.delete(
            f"{p.env.api_url}/v1/admin/tenants/{tenant_id}", headers=p.admin_headers, timeout=30
        )
        deleted_at = _db_now(p)
        if answer.status_code != 200:
            outcome.notes.append(f"FAIL: deleting answered {answer.status_code}")
        with p.env.db() as conn:
            rows = conn.execute(
                "SELECT id::text, state, finished_at FROM jobs WHERE id::text = ANY(%s)",
                (doomed,),
            ).fetchall()
        ended = Counter(state for _, state, _ in rows)
        for job_id, state, finished_at in rows:
            outcome.judged[job_id] = state == "cancelled" or (
                state == "succeeded" and finished_at is not None and finished_at <= deleted_at
            )
        outcome.notes.append(f"deleted tenant: {len(doomed)} jobs at the delete: {dict(ended)}")
        blobs = p.env.var_dir / "blobs" / "tenants" / tenant_id

        def nothing_after_the_delete() -> None:
            # Beat's sweep deletes the blobs (every TENANT_DESTRUCTION_INTERVAL_SECONDS).
            deadline = time.monotonic() + TENANT_DESTRUCTION_SECONDS + RECOVERY_BOUND
            while time.monotonic() < deadline and blobs.exists() and any(blobs.rglob("*")):
                time.sleep(0.5)
            left = [f for f in blobs.rglob("*") if f.is_file()] if blobs.exists() else []
            written = [f for f in left if f.stat().st_mtime > deleted_at.timestamp()]
            with p.env.db() as conn:
                billed = conn.execute(
                    "SELECT metric, count(*) FROM usage_records WHERE tenant_id = %s "
                    "AND recorded_at > %s + interval '1 second' GROUP BY 1",
                    (tenant_id, deleted_at),
                ).fetchall()
                states = Counter(
                    r[0]
                    for r in conn.execute(
                        "SELECT state FROM jobs WHERE id::text = ANY(%s)", (doomed,)
                    ).fetchall()
                )
            outcome.notes.append(
                f"deleted tenant, at the end: jobs {dict(states)}; {len(left)} blobs left, "
                f"{len(written)} written after the delete; usage recorded after: {dict(billed)}"
            )
            if left or billed or set(states) - {"cancelled", "succeeded"}:
                outcome.notes.append("FAIL: the deleted tenant's work went on after the delete")

        outcome.after.append(nothing_after_the_delete)

    return _run(platform, "tenant-deleted", 8, fault)


def receiver_unavailable(platform: Platform) -> Outcome:
    """The webhook receiver answers 503 (Retry-After: 2) for 15 s, then is absent
    (connection refused) for 15 s, then back: every webhook arrives once."""

    def fault(p: Platform, outcome: Outcome) -> None:
        p.receiver.unavailable = True
        time.sleep(15)
        p.receiver.close()
        p.receiver.unavailable = False
        time.sleep(15)
        p.receiver.reopen()
        outcome.notes.append(f"503 answers while unavailable: {sum(p.receiver.refused.values())}")

    return _run(platform, "receiver-503-then-absent", 12, fault)


SOAK_SECONDS = 600.0
SOAK_INTERVAL = 2.0


def soak(platform: Platform) -> Outcome:
    """A 10-minute soak: a job every 2 s, no fault; RSS may grow at most 10 %."""

    def fault(p: Platform, outcome: Outcome) -> None:
        samples = []
        started = time.monotonic()
        next_sample = started
        while time.monotonic() - started < SOAK_SECONDS:
            began = time.monotonic()
            outcome.job_ids.append(p.submit(timeout=240))
            if began >= next_sample:
                samples.append(f"{p.rss_mib():.0f}")
                next_sample += 60
            time.sleep(max(0.0, SOAK_INTERVAL - (time.monotonic() - began)))
        outcome.notes.append(f"RSS MiB each minute: {' '.join(samples)}")

    outcome = _run(platform, "soak", 0, fault)
    if outcome.rss_end > outcome.rss_start * 1.10:
        outcome.notes.append(
            f"FAIL: RSS grew {outcome.rss_end / outcome.rss_start - 1:.0%} in the soak"
        )
    return outcome


def _submit_at_once(platform: Platform, api_key: str, jobs: int) -> list[str]:
    """``jobs`` submitted concurrently for the tenant of ``api_key``."""
    with ThreadPoolExecutor(jobs) as pool:
        return list(pool.map(lambda _: platform.submit(api_key=api_key), range(jobs)))


def _queued(platform: Platform, job_ids: list[str]) -> int:
    with platform.env.db() as conn:
        row = conn.execute(
            "SELECT count(*) FROM jobs WHERE id::text = ANY(%s) AND state = 'queued'",
            (job_ids,),
        ).fetchone()
    return int(row[0]) if row else 0


def _db_now(platform: Platform) -> Any:
    with platform.env.db() as conn:
        row = conn.execute("SELECT now()").fetchone()
    assert row is not None
    return row[0]


SCENARIOS: dict[str, Callable[[Platform], Outcome]] = {
    "compute-sigkill": compute_sigkill,
    "orch-dist-sigkill": orchestration_distribution_killed,
    "worker-sigterm": worker_sigterm,
    "broker-restart": broker_restart,
    "postgres-stopped-15s": postgres_down,
    "api-sigkill-idempotency": api_sigkill_idempotent_clients,
    "tenant-suspended": tenant_suspended,
    "tenant-deleted": tenant_deleted,
    "receiver-503-then-absent": receiver_unavailable,
    "soak": soak,
}


# --- the run --------------------------------------------------------------------------


@contextlib.contextmanager
def platform_up(log_level: str, keep_logs: bool) -> Iterator[Platform]:
    pg: PostgresCluster | None = None
    redis_server: RedisServer | None = None
    receiver: Receiver | None = None
    extra = {
        "CELERIAC_JOBS__STALL_SECONDS": str(STALL_SECONDS),
        "CELERIAC_JOBS__RECONCILE_INTERVAL_SECONDS": str(RECONCILE_SECONDS),
        "CELERIAC_WEBHOOKS__ALLOW_HTTP": "true",
        "CELERIAC_WEBHOOKS__ALLOWED_CIDRS": '["127.0.0.0/8"]',
        "CELERIAC_WORKERS__COMPUTE_MAX_TASKS_PER_CHILD": str(harness.NO_REPLACEMENT),
        # Seconds, not the production minutes, so that a receiver's outage is retried
        # within the recovery bound.
        "CELERIAC_WEBHOOKS__RETRY_SCHEDULE_SECONDS": "[2, 4, 8, 8, 8, 8, 8, 8, 8, 8]",
    }
    try:
        pg = PostgresCluster()
        redis_server = RedisServer()
        harness.PG_SERVER, harness.REDIS_SERVER = pg.url, redis_server.url
        receiver = Receiver()
        with environment("chaos", "celeriac_chaos", log_level, extra, keep_logs) as env:
            platform = Platform(env, receiver, pg, redis_server)
            platform.start()
            hook = httpx.post(
                f"{env.api_url}/v1/webhooks",
                headers=platform.headers,
                json={"url": receiver.url, "event_types": ["job.*"]},
            )
            if hook.status_code != 201:
                raise BenchError(f"registering the receiver failed: {hook.text}")
            baseline = platform.submit()
            if platform.wait_final({baseline}, time.monotonic() + 120) is None:
                raise BenchError("the fault-free job did not finish")
            platform.baseline = platform.analyses(baseline)
            yield platform
    finally:
        if receiver is not None:
            receiver.close()
        if redis_server is not None:
            redis_server.kill()
        if pg is not None:
            pg.drop()


def _table(outcomes: list[Outcome]) -> str:
    header = (
        f"{'scenario':<26} {'sub':>4} {'final':>5} {'ok':>4} {'lost':>4} {'dupU':>4} "
        f"{'wh ok/dup/miss':>14} {'recover s':>9} {'wh s':>5} {'RSS MiB start/end':>17}  met"
    )
    lines = [header, "-" * len(header)]
    for o in outcomes:
        recover = f"{o.recover_seconds:.1f}" if o.recover_seconds is not None else "never"
        hooks = f"{o.webhook_seconds:.1f}" if o.webhook_seconds is not None else "never"
        lines.append(
            f"{o.name:<26} {o.submitted:>4} {o.final:>5} {o.correct:>4} {o.lost:>4} "
            f"{o.duplicated_usage:>4} {'/'.join(map(str, o.webhooks)):>14} {recover:>9} {hooks:>5} "
            f"{o.rss_start:>8.0f}/{o.rss_end:<8.0f}  {'yes' if o.met() else 'NO'}"
        )
        lines += [f"    {n}" for n in o.notes]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> bool:
    install_signal_handlers()
    if args.list:
        for name, scenario in SCENARIOS.items():
            print(f"{name}: {(scenario.__doc__ or '').strip()}")
        return True
    chosen = args.scenario or list(SCENARIOS)
    unknown = sorted(set(chosen) - set(SCENARIOS))
    if unknown:
        raise BenchError(f"unknown scenario(s) {unknown}; --list shows them")
    load_before = os.getloadavg()
    outcomes = []
    with platform_up(args.log_level, args.keep_logs) as platform:
        for name in chosen:
            note(f"chaos: {name} ...")
            outcomes.append(SCENARIOS[name](platform))
            note(_table(outcomes[-1:]))
            platform.env.check_alive()
    load_after = os.getloadavg()
    print(
        f"chaos suite, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; load average "
        f"{load_before[0]:.1f} before, {load_after[0]:.1f} after; {os.cpu_count()} cores; "
        f"stall {STALL_SECONDS:.0f} s, reconcile every {RECONCILE_SECONDS:.0f} s, bound "
        f"{RECOVERY_BOUND:.0f} s after the fault"
    )
    print(_table(outcomes))
    return all(o.met() for o in outcomes)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenario", action="append", help="run only this one (repeatable)")
    parser.add_argument("--list", action="store_true", help="list the scenarios and exit")
    parser.add_argument("--log-level", default="WARNING")
    parser.add_argument("--keep-logs", action="store_true")
    return parser.parse_args()


if __name__ == "__main__":
    run_main(
        "chaos",
        parse_args,
        run,
        (BenchError, subprocess.CalledProcessError),
        "the chaos cluster and Redis were removed",
    )
