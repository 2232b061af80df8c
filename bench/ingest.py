"""Ingest throughput: ``POST /v1/jobs`` on the real API against a FastAPI echo baseline.

Run from the repository root (needs PostgreSQL and Redis on 127.0.0.1, as the tests do)::

    .venv/bin/python -m bench.ingest [--seconds 10] [--requests 20000] [--warmup 200]
        [--concurrency 16] [--workers 1] [--records 10] [--rounds 2] [--client raw|httpx]
        [--observability]

``--observability`` measures what metrics and tracing cost: ``ingest`` then runs with
them off (``CELERIAC_OBSERVABILITY__METRICS_ENABLED=false``, no OTLP endpoint) and a third
target, ``ingest+obs``, the same API with Prometheus metrics on (multiprocess mode,
scraped every 5 s as Prometheus would) and every request traced to a local OTLP sink
(``bench/otlp_sink.py``), driven in the same rounds. Target: ``ingest+obs`` within 5% of
``ingest`` in throughput.

It builds its own environment: a PostgreSQL database ``celeriac_bench`` (dropped and
created), Redis db 7 as the broker and db 6 as the cache (both flushed at the start and
the end), a temporary var directory, a migrated schema, a tenant ``bench`` with an API key
(and quotas too high to refuse anything: the checks run, nothing is throttled) and the
plugin registry rows the pipeline names (no compute worker is needed to accept a
job). It then starts ``celeriac api`` and ``bench/echo_app.py`` under the same uvicorn
options and drives each, alternately, from ``bench/loadgen.py`` in a process of its own.
Everything it started is stopped, and the database dropped, when it ends, fails or is
interrupted.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import signal
import statistics
import sys
import threading
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import httpx
import psycopg
import redis

from bench.kit.cli import BenchError, run_main
from bench.kit.env import (
    PG_SERVER,
    REDIS_SERVER,
    TENANT_SLUG,
    bench_pythonpath,
)
from bench.kit.loadrun import (
    BROKER_DB,
    DATABASE,
    Probe,
    RunResult,
    Server,
    api_environment,
    drive,
    wait_healthy,
)
from bench.kit.machine import background_busy
from bench.kit.procs import HOST, api_argv, free_port
from bench.kit.report import summary
from bench.otlp_sink import OtlpSink

# kombu's Redis transport keeps a queue as a list named after it, plus one list per
# priority step (``<queue>\x06\x16<n>``). A job's start_job message goes to the tenant's
# queue; the fair dispatcher then moves some of them into the pool's ready queue (about as
# many as the pool's live worker slots, at least one: with no worker running, one).
POOL_QUEUE = "orchestration"
TENANT_QUEUE = f"{POOL_QUEUE}.normal.{TENANT_SLUG}"
PRIORITY_STEP = "\x06\x16"
TARGET_RATIO = 0.5
TARGET_P99_MS = 100.0
# What observability (metrics + tracing) may cost in throughput (--observability).
TARGET_OBSERVABILITY_COST = 0.05
SCRAPE_SECONDS = 5.0
BACKGROUND_BUSY_WARNING = 15.0


# --- report -------------------------------------------------------------------------------


def _scrape_every(url: str, stop: threading.Event) -> None:
    """Scrape ``url`` every SCRAPE_SECONDS until ``stop`` (what Prometheus would cost)."""

    def scrape() -> None:
        while not stop.wait(SCRAPE_SECONDS):
            with contextlib.suppress(httpx.HTTPError):
                httpx.get(url, timeout=5)

    threading.Thread(target=scrape, name="scraper", daemon=True).start()


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _print_run(index: int, run: RunResult) -> None:
    r, cpu = run.result, run.cpu
    print(
        f"  run {index}  {run.target:<7} {r['accepted_per_second']:>8.0f} req/s  "
        f"p50 {_ms(r['p50_ms'])}  p95 {_ms(r['p95_ms'])}  p99 {_ms(r['p99_ms'])} ms  "
        f"n={r['accepted']} errors={r['errors']}  "
        f"cpu% server {cpu.get(run.target, 0):.0f} postgres {cpu.get('postgres', 0):.0f} "
        f"redis {cpu.get('redis', 0):.0f} loadgen {cpu['loadgen']:.0f} "
        f"other {cpu['other']:.0f}; machine {cpu['machine']:.0f}% busy; "
        f"new pg sessions {cpu['pg_sessions']:.0f}, redis connections "
        f"{cpu['redis_connections']:.0f}",
        flush=True,
    )
    if r["first_error"]:
        print(f"    answers by status: {r['statuses']}", flush=True)
        print(f"    first error: {r['first_error'][:500]}", flush=True)


@dataclass
class Summary:
    rate: float
    p50: float
    p95: float
    p99: float
    errors: int


def _cpu_ms_per_request(runs: list[RunResult]) -> float:
    """Median over ``runs`` of the server's CPU milliseconds per accepted request."""
    values = [
        10 * r.cpu.get(r.target, 0.0) * r.result["elapsed_seconds"] / r.result["accepted"]
        for r in runs
        if r.result["accepted"]
    ]
    return statistics.median(values) if values else float("nan")


def _summary(runs: list[RunResult]) -> Summary:
    def median(name: str) -> float:
        values = [r.result[name] for r in runs if r.result[name] is not None]
        return statistics.median(values) if values else float("nan")

    return Summary(
        rate=median("accepted_per_second"),
        p50=median("p50_ms"),
        p95=median("p95_ms"),
        p99=median("p99_ms"),
        errors=sum(r.result["errors"] for r in runs),
    )


def _job_rows() -> dict[str, str]:
    """Job id -> creation time of every job row."""
    dsn = f"{PG_SERVER}/{DATABASE}"
    with psycopg.connect(dsn, connect_timeout=5) as conn:
        rows = conn.execute("SELECT id::text, created_at::text FROM jobs").fetchall()
    return {job_id: created for job_id, created in rows}


def _is_job_queue(key: str) -> bool:
    return any(key == q or key.startswith(q + PRIORITY_STEP) for q in (TENANT_QUEUE, POOL_QUEUE))


def _broker_messages() -> tuple[list[str | None], dict[str, int]]:
    """The job id of every message in the tenant's orchestration queue and the pool's
    ready queue (None when a message cannot be read as a Celery task message), and the
    length of each of those lists."""
    client = redis.Redis.from_url(f"{REDIS_SERVER}/{BROKER_DB}", socket_connect_timeout=5)
    try:
        keys = [
            k
            for k in sorted(client.scan_iter(match=f"{POOL_QUEUE}*", count=1000))
            if _is_job_queue(k.decode("latin-1")) and client.type(k) == b"list"
        ]
        lists = {k.decode("latin-1"): client.lrange(k, 0, -1) for k in keys}
    finally:
        client.close()
    messages = [_message_job_id(m) for values in lists.values() for m in values]
    return messages, {k: len(v) for k, v in lists.items()}


def _other_broker_lists() -> dict[str, int]:
    """Lists in the broker db besides the job queues, with their lengths (kombu puts a
    message it cannot route in ``ae.undeliver``; the dispatcher's rings hold slugs)."""
    client = redis.Redis.from_url(f"{REDIS_SERVER}/{BROKER_DB}", socket_connect_timeout=5)
    try:
        return {
            k.decode("latin-1"): int(client.llen(k))
            for k in client.scan_iter(count=1000)
            if not _is_job_queue(k.decode("latin-1")) and client.type(k) == b"list"
        }
    finally:
        client.close()


def _message_job_id(raw: bytes | str) -> str | None:
    # kombu's envelope holds Celery's protocol-2 body: base64 JSON [args, kwargs, embed].
    try:
        envelope = json.loads(raw)
        body = json.loads(base64.b64decode(envelope["body"]))
        return str(body[1]["job_id"])
    except (ValueError, KeyError, IndexError, TypeError):
        return None


def _log_lines(server: Server) -> list[str]:
    try:
        text = server.process.log_path.read_text(errors="replace")
    except OSError:
        return []
    return [line for line in text.splitlines() if line.strip()]


def _report(runs: list[RunResult], args: argparse.Namespace, servers: list[Server]) -> bool:
    echo = _summary([r for r in runs if r.target == "echo"])
    ingest = _summary([r for r in runs if r.target == "ingest"])
    body_bytes = runs[0].result["body_bytes"]
    print(
        f"\nmedian of {args.rounds} runs each; {args.concurrency} in flight, up to "
        f"{args.requests} measured requests or {args.seconds:.0f} s per run after "
        f"{args.warmup} warm-up requests; {args.records} records ({body_bytes} bytes) per "
        f"job; {args.workers} uvicorn worker(s); {args.client} client\n"
    )
    print(f"{'target':<12}{'req/s':>9}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}{'errors':>8}")
    for name, s in (("echo", echo), ("ingest", ingest)):
        print(f"{name:<12}{s.rate:>9.0f}{s.p50:>9.1f}{s.p95:>9.1f}{s.p99:>9.1f}{s.errors:>8}")
    ratio = ingest.rate / echo.rate if echo.rate else 0.0
    ratio_ok = ratio >= TARGET_RATIO
    p99_ok = ingest.p99 < TARGET_P99_MS
    print(
        f"ratio ingest/echo: {ratio:.2f} (target >= {TARGET_RATIO}: "
        f"{'met' if ratio_ok else 'NOT met'}); ingest p99 {ingest.p99:.1f} ms "
        f"(target < {TARGET_P99_MS:.0f}: {'met' if p99_ok else 'NOT met'})"
    )
    summary(
        "ingest",
        f"POST /v1/jobs, {args.concurrency} in flight (p99 {ingest.p99:.0f} ms)",
        ingest.rate,
        "jobs/s",
        baseline=f"echo {echo.rate:.0f} req/s",
        ratio=ratio,
        target=f">= {TARGET_RATIO}x, p99 < {TARGET_P99_MS:.0f} ms",
        met=ratio_ok and p99_ok,
    )

    observed_ok = True
    observed = [r for r in runs if r.target == "ingest+obs"]
    if observed:
        on = _summary(observed)
        name = "ingest+obs"
        print(f"{name:<12}{on.rate:>9.0f}{on.p50:>9.1f}{on.p95:>9.1f}{on.p99:>9.1f}{on.errors:>8}")
        cost = 1 - on.rate / ingest.rate if ingest.rate else float("nan")
        # The server's CPU per accepted request varies far less than the wall clock on a
        # shared machine: the cost of observability in its own terms.
        cpu_off = _cpu_ms_per_request([r for r in runs if r.target == "ingest"])
        cpu_on = _cpu_ms_per_request(observed)
        print(
            f"server CPU ms per accepted request: off {cpu_off:.2f}, on {cpu_on:.2f} "
            f"(on / off {cpu_on / cpu_off if cpu_off else float('nan'):.3f}); "
            f"load average {os.getloadavg()[0]:.2f}"
        )
        observed_ok = cost < TARGET_OBSERVABILITY_COST and on.errors == 0
        print(
            f"observability cost: throughput {cost:+.1%} (on {on.rate:.0f} vs off "
            f"{ingest.rate:.0f} req/s; target < {TARGET_OBSERVABILITY_COST:.0%}: "
            f"{'met' if observed_ok else 'NOT met'}), p50 {on.p50:.1f} vs {ingest.p50:.1f} ms, "
            f"p99 {on.p99:.1f} vs {ingest.p99:.1f} ms"
        )
    accepted = sum(
        r.result["accepted"] + r.result["warmup_statuses"].get("202", 0)
        for r in runs
        if r.target.startswith("ingest")
    )
    jobs = _job_rows()
    messages, lists = _broker_messages()
    consistent = len(jobs) == accepted == len(messages) and set(messages) == set(jobs)
    where = ", ".join(f"{n} in {k!r}" for k, n in lists.items()) or "no queue"
    print(
        f"\nsanity: ingest answered 202 {accepted} times (warm-ups included); jobs rows "
        f"{len(jobs)}; start_job messages {len(messages)} ({where})"
        f" -> {'consistent' if consistent else 'MISMATCH'}"
    )
    if not consistent:
        unpublished = sorted(set(jobs) - set(messages), key=jobs.__getitem__)
        counts = Counter(messages)
        duplicated = sorted(j for j, n in counts.items() if n > 1 and j is not None)
        strays = sorted(j for j in counts if j is not None and j not in jobs)
        order = {j: n for n, j in enumerate(sorted(jobs, key=jobs.__getitem__), start=1)}
        print(f"  jobs without a message: {len(unpublished)}", end="")
        print(
            "".join(f"\n    {j}: job number {order[j]} by creation time" for j in unpublished[:10])
        )
        others = _other_broker_lists()
        print(f"  other lists in the broker db: {others or 'none'}")
        print(f"  jobs with more than one message: {len(duplicated)} {duplicated[:10]}")
        print(f"  messages naming no job row: {len(strays)} {strays[:10]}")
        print(f"  unreadable messages: {counts.get(None, 0)}")
    for server in servers:
        lines = _log_lines(server)
        if lines:
            print(f"{server.name} wrote {len(lines)} line(s) to its log (at WARNING); first:")
            for line in lines[:3]:
                print(f"    {line[:400]}")
    return ratio_ok and p99_ok and consistent and ingest.errors == 0 and observed_ok


# --- main ---------------------------------------------------------------------------------


def _parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="POST /v1/jobs on the real API against a FastAPI echo of the same body."
    )
    parser.add_argument("--requests", type=int, default=20000, help="cap per measured phase")
    parser.add_argument("--warmup", type=int, default=200, help="unmeasured requests first")
    parser.add_argument("--concurrency", type=int, default=16, help="requests in flight")
    parser.add_argument("--seconds", type=float, default=10.0, help="cap per measured phase")
    parser.add_argument("--workers", type=int, default=1, help="uvicorn worker processes")
    parser.add_argument("--records", type=int, default=10, help="records per inline job")
    parser.add_argument("--rounds", type=int, default=2, help="echo+ingest pairs to run")
    parser.add_argument(
        "--client",
        choices=["raw", "httpx"],
        default="raw",
        help="load generator's HTTP client (see bench/loadgen.py)",
    )
    parser.add_argument(
        "--observability",
        action="store_true",
        help="also run the API with metrics and tracing on (ingest+obs) against it off",
    )
    parser.add_argument(
        "--var-root",
        type=Path,
        default=None,
        metavar="DIR",
        help="where the temporary var directory (blobs, keyring) is made; default: the "
        "repository's var/bench (bench/kit/env.py says why not /tmp). The blob store writes "
        "a file and a folder per job there, so its filesystem is part of what is measured",
    )
    parser.add_argument(
        "--api-entry",
        default="celeriac.platform.cli",
        metavar="MODULE",
        help="for what-if experiments: a module run with -m in place of the celeriac CLI "
        "(it gets the same arguments, e.g. one that patches something and calls its main)",
    )
    args = parser.parse_args()
    for name in ("requests", "concurrency", "seconds", "workers", "records", "rounds"):
        if getattr(args, name) <= 0:
            parser.error(f"--{name} must be positive")
    if args.warmup < 0:
        parser.error("--warmup must not be negative")
    return args


def run(args: argparse.Namespace) -> bool:
    probe: Probe | None = None
    sink: OtlpSink | None = None
    scraping = threading.Event()
    busy = background_busy()
    print(f"machine: {os.cpu_count()} cores, {busy:.0f}% busy before the bench started")
    if busy > BACKGROUND_BUSY_WARNING:
        print("  warning: something else is using the CPU; the figures will be noisy")
    with api_environment(args.var_root) as api:
        try:
            api_port, echo_port = free_port(), free_port()
            workers = str(args.workers)
            celeriac_argv = api_argv(api_port, args.api_entry, args.workers)
            echo_argv = [
                sys.executable,
                "-m",
                "bench.echo_app",
                "--host",
                HOST,
                "--port",
                str(echo_port),
                "--workers",
                workers,
            ]
            api.start_server("echo", echo_argv, echo_port, bench_pythonpath(api.env))
            off = {"CELERIAC_OBSERVABILITY__METRICS_ENABLED": "false"} if args.observability else {}
            api.start_server("ingest", celeriac_argv, api_port, off)
            if args.observability:
                sink = OtlpSink()
                obs_port = free_port()
                obs_argv = api_argv(obs_port, args.api_entry, args.workers)
                on = {"CELERIAC_OBSERVABILITY__OTLP_ENDPOINT": sink.endpoint}
                api.start_server("ingest+obs", obs_argv, obs_port, on)
            servers = api.servers
            wait_healthy(servers)
            if args.observability:
                _scrape_every(f"{servers[2].url}/metrics", scraping)
            ready = httpx.get(f"{servers[1].url}/readyz", timeout=10)
            if ready.status_code != 200:
                raise BenchError(f"the API is not ready: {ready.text}")

            probe = Probe(servers)
            runs: list[RunResult] = []
            for round_ in range(args.rounds):
                # Echo first, then the Celeriac servers, in reverse order every other round:
                # with --observability, off and on each run first in half the rounds (the
                # second of two runs in a row met a fuller jobs table and a warmer machine).
                order = servers if round_ % 2 == 0 else [servers[0], *servers[:0:-1]]
                for server in order:
                    runs.append(drive(server, probe, api.api_key, args, api.var_dir))
                    _print_run(len(runs), runs[-1])
            return _report(runs, args, servers)
        finally:
            # A second Ctrl-C must not cut the clean-up short; it is bounded by the servers'
            # grace period.
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            scraping.set()
            if probe is not None:
                probe.close()
            if sink is not None:
                print(f"OTLP sink: {sink.requests} exports, {sink.bytes} bytes")
                sink.close()


def main() -> None:
    run_main("ingest", _parse_args, run, (BenchError,), "servers stopped and database dropped")


if __name__ == "__main__":
    main()
