"""Small-job latency end to end: Celeriac against a bare Celery canvas of the same shape,
on the same workers and broker, in the same run.

Run from the repository root (needs PostgreSQL and Redis on 127.0.0.1)::

    .venv/bin/python -m bench.latency [--jobs 200] [--warmup 10] [--block 20] [--poll-ms 2]

A job is 100 records (the first 100 of tests/data/sample_1000.ndjson) through two dataset
generators and two analyzers that each accept both datasets, so that it has 2 dataset
tasks and 4 analysis tasks:

    datasets  tabular (table), timeseries (timeseries, timestamp_field=timestamp)
    analyzers summary, anomalies (both accept table and timeseries)

(``sentiment`` and ``keywords`` accept only ``text``, ``summary`` and ``anomalies`` no
``text``: a [tabular, text] pipeline with two analyzers would have only 2 analysis tasks.)

Designs, interleaved in blocks of ``--block`` jobs so that background noise hits all alike,
each after ``--warmup`` unmeasured jobs:

- ``celeriac``: ``POST /v1/jobs`` (inline JSON) to ``celeriac api`` over a keep-alive
  httpx connection, then the job's row is polled directly in PostgreSQL (``SELECT state
  FROM jobs WHERE id = ...`` every ``--poll-ms``) until it is final: start_job
  (orchestration) -> fan_out (distribution) -> 2 x run_task (compute) -> fan_out -> 4 x
  run_task -> finalize (distribution), state in PostgreSQL, blobs encrypted on disk.
- ``bare``: ``chord(group(2 x dataset), chord(group(4 x analysis), finalize))`` published
  from this process with Celery (``bench/bare_canvas.py``): dataset and analysis tasks on
  the ``compute`` queue, finalize on ``distribution``, results and chord counters in the
  Redis result backend; the tasks do nothing but note their times. Measured from
  ``apply_async`` to ``AsyncResult(finalize).get()`` returning (Redis pub/sub, no polling).
- ``bare+plugins``: the same canvas with the records in the dataset messages; the tasks run
  the same plugin code (``generate_partial``; ``combine_partials`` + ``analyze_dataset``),
  passing Parquet through the result backend. It separates the plugins' own compute time
  from what the platform adds.

All three run on the very same worker processes: the three pools are started with the
command line ``celeriac worker --pool P`` execs (``celeriac.platform.cli.worker_argv``,
default concurrency: gevent 100 / 100, prefork 2 with ``-O fair``, prefetch 1,
``--max-tasks-per-child``: see below) plus ``--include bare_canvas``.

The compute pool's processes are not replaced during the run (``--max-tasks-per-child``
defaults to 1,000,000, not the platform's 200): a pool process forked after the compute
parent has used the database shares the parent's PostgreSQL connection and jobs then fail
or hang (``--max-tasks-per-child 0`` keeps the platform's setting, to see it happen).

``--observability`` measures instead what metrics and tracing cost a small job: the
``celeriac`` design alone, in alternating phases (off, on, off, on, ...; ``--phases``
pairs, ``--jobs`` measured jobs per variant in all) on fresh processes each phase. Off:
``CELERIAC_OBSERVABILITY__METRICS_ENABLED=false`` and no OTLP endpoint. On: every process
with Prometheus metrics in multiprocess mode (the pools with a metrics port, all scraped
every 5 s as Prometheus would) and every span exported to a local OTLP sink
(``bench/otlp_sink.py``). Target: p50 on within 5% of off.

``--designs celeriac --py-spy DIR`` samples the API and the three pools with py-spy over
the measured phase and prints where they spend their time.

Environment (removed at the end, also on error or Ctrl-C): database
``celeriac_bench_latency`` (dropped and created), Redis db 2 (broker) and 3 (cache, results),
a temporary var directory. Target: p50 of ``celeriac`` within 1.5x of ``bare``.
Exit status 0 when met, 1 when not, 2 when the set-up or a process failed.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from celery import chord, group

from bench.kit.cli import BenchError, install_signal_handlers, note, run_main
from bench.kit.env import (
    FINAL_STATES,
    Env,
    add_common_options,
    client_app,
    environment,
    sample_records,
    settings_from_options,
)
from bench.kit.machine import CpuMeter, wait_for_quiet_machine
from bench.kit.procs import Process, Profiler, free_port, summarize_profile
from bench.kit.report import percentile, summary
from bench.otlp_sink import OtlpSink
from celeriac.platform.settings import get_settings

DATABASE = "celeriac_bench_latency"
TARGET_RATIO = 1.5
RECORDS = 100
JOB_TIMEOUT_SECONDS = 60.0
PIPELINE: dict[str, Any] = {
    "datasets": [
        {"name": "tabular"},
        {"name": "timeseries", "params": {"timestamp_field": "timestamp"}},
    ],
    "analyzers": [{"name": "summary"}, {"name": "anomalies"}],
}
# What the registry says (workers/compute/plugins/*.py); the first Celeriac job's task
# rows are checked against the shape this gives.
PRODUCES = {"tabular": "table", "timeseries": "timeseries"}
ACCEPTS = {"summary": ("table", "timeseries"), "anomalies": ("table", "timeseries")}
DESIGNS = ("celeriac", "bare", "bare+plugins")
SEGMENTS = ("submit>d0", "datasets", "d1>a0", "analysis", "a1>done", "done>seen")


@dataclass
class Sample:
    design: str
    total_ms: float
    submitted: float  # wall clock (time.time()) just before the submit
    marks: dict[str, float] = field(default_factory=dict)  # wall-clock milestones
    job_id: str = ""
    state: str = ""
    accept_ms: float = 0.0


def analysis_pairs() -> list[tuple[str, dict[str, Any]]]:
    return [
        (analyzer["name"], dataset)
        for analyzer in PIPELINE["analyzers"]
        for dataset in PIPELINE["datasets"]
        if PRODUCES[dataset["name"]] in ACCEPTS[analyzer["name"]]
    ]


# --- the designs --------------------------------------------------------------------------


class Celeriac:
    def __init__(self, env: Env, records: list[dict[str, Any]], poll_seconds: float) -> None:
        self.client = httpx.Client(
            base_url=env.api_url, headers={"Authorization": f"Bearer {env.api_key}"}, timeout=30
        )
        self.env = env
        self.conn = env.db()
        self.body = {"pipeline": PIPELINE, "records": records}
        self.poll_seconds = poll_seconds
        self.polls = 0  # queries of this connection: each a transaction (autocommit)

    def run(self) -> Sample:
        wall = time.time()
        start = time.perf_counter()
        answer = self.client.post("/v1/jobs", json=self.body)
        accepted = time.perf_counter()
        if answer.status_code != 202:
            raise BenchError(f"POST /v1/jobs answered {answer.status_code}: {answer.text[:500]}")
        job_id = answer.json()["id"]
        while True:
            self.polls += 1
            row = self.conn.execute("SELECT state FROM jobs WHERE id = %s", (job_id,)).fetchone()
            if row is not None and row[0] in FINAL_STATES:
                break
            if time.perf_counter() - start > JOB_TIMEOUT_SECONDS:
                raise BenchError(
                    f"job {job_id} did not end within {JOB_TIMEOUT_SECONDS:.0f} s\n"
                    + self.env.diagnose_job(job_id)
                )
            time.sleep(self.poll_seconds)
        seen = time.perf_counter()
        return Sample(
            "celeriac",
            (seen - start) * 1000,
            wall,
            {"seen": wall + seen - start},
            job_id=job_id,
            state=row[0],
            accept_ms=(accepted - start) * 1000,
        )

    def add_marks(self, samples: list[Sample]) -> None:
        """Milestones from the job and task rows (wall-clock times the processes wrote)."""
        rows = self.conn.execute(
            """
            SELECT j.id::text, extract(epoch FROM j.created_at), extract(epoch FROM j.started_at),
                   extract(epoch FROM j.finished_at),
                   extract(epoch FROM min(t.started_at) FILTER (WHERE t.stage = 'datasets')),
                   extract(epoch FROM max(t.finished_at) FILTER (WHERE t.stage = 'datasets')),
                   extract(epoch FROM min(t.started_at) FILTER (WHERE t.stage = 'analysis')),
                   extract(epoch FROM max(t.finished_at) FILTER (WHERE t.stage = 'analysis')),
                   count(*) FILTER (WHERE t.stage = 'datasets'),
                   count(*) FILTER (WHERE t.stage = 'analysis')
            FROM jobs j JOIN job_tasks t ON t.job_id = j.id
            GROUP BY j.id
            """
        ).fetchall()
        by_id = {r[0]: r[1:] for r in rows}
        for sample in samples:
            row = by_id.get(sample.job_id)
            if row is None:
                continue
            created, started, finished, d0, d1, a0, a1, _, _ = (
                float(v) if v is not None else float("nan") for v in row
            )
            sample.marks.update(
                created=created, running=started, d0=d0, d1=d1, a0=a0, a1=a1, done=finished
            )

    def transactions(self) -> int:
        """Transactions committed or rolled back in the bench database so far (as far as
        PostgreSQL's statistics have been flushed by the backends)."""
        self.polls += 1  # this query is one too
        row = self.conn.execute(
            "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = %s",
            (DATABASE,),
        ).fetchone()
        return int(row[0]) if row else 0

    def settled_transactions(self, timeout: float = 15.0) -> int:
        """:meth:`transactions` minus the polls, once it stops changing."""
        deadline = time.monotonic() + timeout
        last = self.transactions() - self.polls
        while time.monotonic() < deadline:
            time.sleep(1.0)
            now = self.transactions() - self.polls
            if now == last and time.monotonic() > deadline - timeout + 11:
                break
            last = now
        return last

    def shape(self, job_id: str) -> tuple[int, int]:
        row = self.conn.execute(
            "SELECT count(*) FILTER (WHERE stage = 'datasets'), "
            "count(*) FILTER (WHERE stage = 'analysis') FROM job_tasks WHERE job_id = %s",
            (job_id,),
        ).fetchone()
        assert row is not None
        return int(row[0]), int(row[1])

    def close(self) -> None:
        self.client.close()
        self.conn.close()


class Bare:
    def __init__(self, records: list[dict[str, Any]] | None) -> None:
        self.app = client_app()
        self.design = "bare" if records is None else "bare+plugins"
        app = self.app
        datasets = [
            app.signature(
                "bench.compute.dataset",
                kwargs={"name": d["name"], "records": records, "params": d.get("params")},
                queue="compute",
            )
            for d in PIPELINE["datasets"]
        ]
        analyses = [
            app.signature(
                "bench.compute.analysis",
                kwargs={"analyzer": a, "dataset": d["name"], "dataset_params": d.get("params")},
                queue="compute",
            )
            for a, d in analysis_pairs()
        ]
        self._build: Callable[[str], Any] = lambda callback_id: chord(
            group(datasets, app=app),
            chord(
                group(analyses, app=app),
                app.signature(
                    "bench.distribution.finalize", queue="distribution", task_id=callback_id
                ),
                app=app,
            ),
            app=app,
        )

    def canvas(self, callback_id: str) -> Any:
        """One job's canvas, its finalize task with id ``callback_id`` (bench.throughput
        publishes many at once)."""
        return self._build(callback_id)

    def run(self) -> Sample:
        callback_id = str(uuid.uuid4())
        canvas = self._build(callback_id)
        wall = time.time()
        start = time.perf_counter()
        canvas.apply_async()
        result = self.app.AsyncResult(callback_id)
        out = result.get(timeout=JOB_TIMEOUT_SECONDS)
        seen = time.perf_counter()
        marks = {
            "seen": wall + seen - start,
            "d0": min(d["t0"] for d in out["datasets"]),
            "d1": max(d["t1"] for d in out["datasets"]),
            "a0": min(a["t0"] for a in out["analyses"]),
            "a1": max(a["t1"] for a in out["analyses"]),
            "done": out["t1"],
        }
        if len(out["datasets"]) != len(PIPELINE["datasets"]) or len(out["analyses"]) != len(
            analysis_pairs()
        ):
            raise BenchError(f"the bare canvas ran an unexpected shape: {out}")
        return Sample(self.design, (seen - start) * 1000, wall, marks, state="succeeded")


# --- report -------------------------------------------------------------------------------


def segments(sample: Sample) -> dict[str, float]:
    m = {"submit": sample.submitted, **sample.marks}
    order = ("submit", "d0", "d1", "a0", "a1", "done", "seen")
    values = [m.get(k, float("nan")) for k in order]
    return {name: (b - a) * 1000 for name, a, b in zip(SEGMENTS, values, values[1:], strict=False)}


def median(values: list[float]) -> float:
    clean = [v for v in values if v == v]
    return statistics.median(clean) if clean else float("nan")


def report(
    samples: dict[str, list[Sample]],
    meters: dict[str, CpuMeter],
    args: argparse.Namespace,
    recycled: int,
    max_tasks_per_child: int,
    pg_transactions: dict[str, int],
) -> bool:
    designs = args.designs
    print(
        f"\nlatency: {RECORDS} records, datasets [tabular, timeseries] x analyzers "
        f"[summary, anomalies] = 2 dataset + 4 analysis tasks + finalize; {args.jobs} "
        f"sequential jobs per design after {args.warmup} warm-up, interleaved in blocks of "
        f"{args.block}\n"
    )
    print(
        f"{'design':<14}{'jobs':>6}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}{'mean ms':>9}"
        f"{'max ms':>9}"
    )
    p50: dict[str, float] = {}
    for design in designs:
        totals = [s.total_ms for s in samples[design]]
        if not totals:
            continue
        p50[design] = percentile(totals, 0.5)
        print(
            f"{design:<14}{len(totals):>6}{p50[design]:>9.1f}{percentile(totals, 0.95):>9.1f}"
            f"{percentile(totals, 0.99):>9.1f}{statistics.fmean(totals):>9.1f}"
            f"{max(totals):>9.1f}"
        )
    ok = True
    if "celeriac" in p50 and "bare" in p50:
        ratio = p50["celeriac"] / p50["bare"]
        ok = ratio <= TARGET_RATIO
        verdict = "met" if ok else "NOT met"
        print(
            f"\nratio p50 celeriac / bare:         {ratio:.2f}  "
            f"(target <= {TARGET_RATIO}: {verdict})"
        )
    if "celeriac" in p50 and "bare+plugins" in p50:
        print(f"ratio p50 celeriac / bare+plugins: {p50['celeriac'] / p50['bare+plugins']:.2f}")
        summary(
            "latency",
            "small job p50",
            p50["celeriac"],
            "ms",
            baseline=f"bare+plugins {p50['bare+plugins']:.1f} ms",
            ratio=p50["celeriac"] / p50["bare+plugins"],
            target="<= 1.3x (issue 16)",
            met=p50["celeriac"] / p50["bare+plugins"] <= 1.3,
        )
    print(
        f"(celeriac end = job row seen final by polling PostgreSQL every {args.poll_ms} ms; "
        "bare end = finalize result received over Redis pub/sub)"
    )
    print(
        "\nwhere the time goes: median ms per segment (wall-clock marks written by the tasks;"
        " d0/d1 = first dataset task start / last end, a0/a1 = same for analysis, done = job"
        " finished_at / bare finalize end, seen = client sees it)"
    )
    print(f"{'design':<14}" + "".join(f"{s:>11}" for s in SEGMENTS) + f"{'sum':>9}")
    for design in designs:
        segs = [segments(s) for s in samples[design]]
        medians = [median([seg[name] for seg in segs]) for name in SEGMENTS]
        print(f"{design:<14}" + "".join(f"{v:>11.1f}" for v in medians) + f"{sum(medians):>9.1f}")
    cel = samples.get("celeriac", [])
    parts = {
        "POST>202": [s.accept_ms for s in cel],
        "submit>created": [(s.marks["created"] - s.submitted) * 1000 for s in cel],
        "created>running": [(s.marks["running"] - s.marks["created"]) * 1000 for s in cel],
        "running>d0": [(s.marks["d0"] - s.marks["running"]) * 1000 for s in cel],
    }
    print(
        "celeriac submit>d0 split: " + ", ".join(f"{k} {median(v):.1f}" for k, v in parts.items())
    )

    components = ("api", "orchestration", "distribution", "compute", "postgres", "redis", "bench")
    print(
        "\nCPU ms per job (postgres and redis: server-wide, anything else using them counts; "
        "machine: all cores busy; others: machine minus the columns before it, i.e. other "
        "people's processes on this shared machine; busy%: of both cores, during the design's "
        "blocks)"
    )
    print(
        f"{'design':<14}"
        + "".join(f"{c[:13]:>14}" for c in components)
        + f"{'machine':>9}{'others':>9}{'busy%':>7}"
    )
    for design in designs:
        meter, n = meters[design], len(samples[design])
        ours = [meter.totals.get(c, 0.0) for c in components]
        row = "".join(f"{1000 * v / n:>14.1f}" for v in ours)
        machine = meter.totals.get("machine", 0.0)
        others = max(0.0, machine - sum(ours))
        print(
            f"{design:<14}{row}{1000 * machine / n:>9.1f}{1000 * others / n:>9.1f}"
            f"{100 * machine / meter.wall / 2:>6.0f}%"
        )
    if "celeriac" in pg_transactions and cel:
        print(
            "PostgreSQL transactions per celeriac job (pg_stat_database of the bench database, "
            "minus the bench's own polls): "
            f"~{pg_transactions['celeriac'] / len(cel):.0f}"
        )
    print(
        f"\ncompute pool processes replaced during the run (max-tasks-per-child "
        f"{max_tasks_per_child}): {recycled}"
    )
    states = {s.state for s in cel}
    if states != {"succeeded"}:
        print(f"WARNING: celeriac job states {sorted(states)}")
        ok = False
    return ok


# --- main ---------------------------------------------------------------------------------


def _parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=200, help="measured jobs per design")
    parser.add_argument("--warmup", type=int, default=10, help="unmeasured jobs per design first")
    parser.add_argument("--block", type=int, default=20, help="jobs per design per turn")
    parser.add_argument("--poll-ms", type=float, default=2.0, help="job row poll interval")
    parser.add_argument(
        "--designs",
        default=",".join(DESIGNS),
        help=f"which designs to run, comma separated (default: {','.join(DESIGNS)})",
    )
    parser.add_argument(
        "--observability",
        action="store_true",
        help="celeriac with metrics and tracing off vs on, in alternating phases",
    )
    parser.add_argument("--phases", type=int, default=2, help="off/on pairs (--observability)")
    parser.add_argument(
        "--py-spy",
        type=Path,
        default=None,
        metavar="DIR",
        help="sample the API and the three pools with py-spy over the measured phase (best "
        "with --designs celeriac) and print where they spend their time",
    )
    add_common_options(parser)
    args = parser.parse_args()
    args.designs = [d.strip() for d in args.designs.split(",") if d.strip()]
    if not args.designs or set(args.designs) - set(DESIGNS):
        parser.error(f"--designs must name some of {', '.join(DESIGNS)}")
    if args.py_spy is not None:
        args.py_spy.mkdir(parents=True, exist_ok=True)
    if args.jobs <= 0 or args.block <= 0 or args.warmup < 0 or args.poll_ms <= 0:
        parser.error("--jobs, --block and --poll-ms must be positive, --warmup not negative")
    return args


def _warm_up(
    runners: dict[str, Callable[[], Sample]], designs: list[str], jobs: int, celeriac: Celeriac
) -> None:
    """``jobs`` jobs of each design, then one celeriac job whose task shape is checked."""
    note(f"warm-up: {jobs} jobs per design")
    for design in designs:
        for _ in range(jobs):
            runners[design]()
    first = runners["celeriac"]()
    shape = celeriac.shape(first.job_id)
    if shape != (len(PIPELINE["datasets"]), len(analysis_pairs())):
        raise BenchError(
            f"a celeriac job has {shape} (dataset, analysis) tasks, "
            f"not {(2, len(analysis_pairs()))}"
        )


def _measure(
    env: Env,
    workers: dict[str, Process],
    runners: dict[str, Callable[[], Sample]],
    args: argparse.Namespace,
    samples: dict[str, list[Sample]],
    meters: dict[str, CpuMeter],
    pool_pids: set[int],
) -> None:
    """``args.jobs`` jobs per design in blocks of ``args.block``, the designs in turn, each
    block under its design's CPU meter; ``pool_pids`` gathers the compute children seen."""
    designs = args.designs
    started = time.monotonic()
    while any(len(samples[d]) < args.jobs for d in designs):
        for design in designs:
            count = min(args.block, args.jobs - len(samples[design]))
            if count <= 0:
                continue
            with meters[design]:
                for _ in range(count):
                    samples[design].append(runners[design]())
            env.check_alive()
            pool_pids |= set(workers["compute"].children())
        done = sum(len(v) for v in samples.values())
        note(f"  {done}/{args.jobs * len(designs)} jobs, {time.monotonic() - started:.0f} s")


def run(args: argparse.Namespace) -> bool:
    records = sample_records()[:RECORDS]
    with environment(
        "latency", DATABASE, args.log_level, settings_from_options(args), args.keep_logs
    ) as env:
        workers = env.start_workers(include=["bench.bare_canvas"])
        api = env.start_api()

        max_tasks_per_child = get_settings().workers.compute_max_tasks_per_child
        groups = {api.pid: "api", **{w.pid: pool for pool, w in workers.items()}}
        celeriac = Celeriac(env, records, args.poll_ms / 1000)
        runners: dict[str, Callable[[], Sample]] = {
            "celeriac": celeriac.run,
            "bare": Bare(None).run,
            "bare+plugins": Bare(records).run,
        }
        designs = args.designs
        profilers: list[Profiler] = []
        try:
            _warm_up(runners, designs, args.warmup, celeriac)
            busy = wait_for_quiet_machine()
            note(f"machine {busy:.0f}% busy (of one core) before measuring")
            samples: dict[str, list[Sample]] = {d: [] for d in designs}
            meters = {d: CpuMeter(groups) for d in designs}
            # Only celeriac jobs use PostgreSQL: its transaction count over the whole phase,
            # read once the backends have flushed their statistics (10 s idle at most).
            transactions_before = celeriac.transactions() - celeriac.polls
            pool_pids = set(workers["compute"].children())
            if args.py_spy is not None:
                profilers = [
                    Profiler(process, args.py_spy / f"latency-{name}.txt")
                    for name, process in (("api", api), *workers.items())
                ]
            _measure(env, workers, runners, args, samples, meters, pool_pids)
            for profiler in profilers:
                profiler.stop()
            profilers = []
            transactions = {}
            if "celeriac" in designs:
                transactions["celeriac"] = celeriac.settled_transactions() - transactions_before
            if "celeriac" in samples:
                celeriac.add_marks(samples["celeriac"])
            recycled = len(pool_pids) - get_settings().workers.compute_concurrency
            ok = report(samples, meters, args, recycled, max_tasks_per_child, transactions)
            if args.py_spy is not None:
                print(
                    "\npy-spy (100 samples/s per process) over the measured phase, "
                    f"in {args.py_spy}:"
                )
                for name in ("api", *workers):
                    summarize_profile(args.py_spy / f"latency-{name}.txt")
            return ok
        finally:
            for profiler in profilers:
                profiler.stop()
            celeriac.close()


# --- observability off vs on ----------------------------------------------------------------

OBSERVABILITY_TARGET = 0.05
SCRAPE_SECONDS = 5.0


def _variant_env(
    env: Env, variant: str, sink: OtlpSink
) -> tuple[dict[str, dict[str, str]], dict[str, str], list[str]]:
    """Per-pool environments, the API's, and the metrics URLs to scrape."""
    if variant == "off":
        off = {"CELERIAC_OBSERVABILITY__METRICS_ENABLED": "false"}
        return {pool: off for pool in ("orchestration", "distribution", "compute")}, off, []
    on = {"CELERIAC_OBSERVABILITY__OTLP_ENDPOINT": sink.endpoint}
    pools, urls = {}, []
    for pool in ("orchestration", "distribution", "compute"):
        # What `celeriac worker --metrics-port` does before it execs Celery.
        directory = env.var_dir / "metrics" / pool
        shutil.rmtree(directory, ignore_errors=True)
        directory.mkdir(parents=True)
        port = free_port()
        pools[pool] = {
            **on,
            "PROMETHEUS_MULTIPROC_DIR": str(directory),
            "CELERIAC_OBSERVABILITY__METRICS_PORT": str(port),
        }
        urls.append(f"http://127.0.0.1:{port}/metrics")
    return pools, on, urls


def _scrape(urls: list[str], stop: threading.Event) -> threading.Thread:
    def loop() -> None:
        while not stop.wait(SCRAPE_SECONDS):
            for url in urls:
                with contextlib.suppress(httpx.HTTPError):
                    httpx.get(url, timeout=5)

    thread = threading.Thread(target=loop, name="scraper", daemon=True)
    thread.start()
    return thread


def run_observability(args: argparse.Namespace) -> bool:
    records = sample_records()[:RECORDS]
    sink = OtlpSink()
    samples: dict[str, list[Sample]] = {"off": [], "on": []}
    loads: dict[str, list[float]] = {"off": [], "on": []}
    # CPU seconds per component, summed over a variant's measured phases (each phase starts
    # its own processes, so one meter per phase, added up here).
    cpu: dict[str, dict[str, float]] = {"off": {}, "on": {}}
    per_phase = max(1, args.jobs // args.phases)
    try:
        with environment(
            "latency", DATABASE, args.log_level, settings_from_options(args), args.keep_logs
        ) as env:
            for index in range(2 * args.phases):
                variant = ("off", "on")[index % 2]
                pools, api_env, urls = _variant_env(env, variant, sink)
                workers = env.start_workers(pool_env=pools)
                api = env.start_api(api_env)
                if urls:
                    urls.append(f"{env.api_url}/metrics")
                celeriac = Celeriac(env, records, args.poll_ms / 1000)
                stop = threading.Event()
                _scrape(urls, stop)
                try:
                    for _ in range(args.warmup):
                        celeriac.run()
                    wait_for_quiet_machine()
                    note(f"phase {index + 1}/{2 * args.phases}: {variant}, {per_phase} jobs")
                    groups = {api.pid: "api", **{w.pid: pool for pool, w in workers.items()}}
                    meter = CpuMeter(groups)
                    with meter:
                        for _ in range(per_phase):
                            samples[variant].append(celeriac.run())
                    for name, seconds in meter.totals.items():
                        cpu[variant][name] = cpu[variant].get(name, 0.0) + seconds
                    loads[variant].append(os.getloadavg()[0])
                finally:
                    stop.set()
                    celeriac.close()
                    env.stop(api)
                    for process in workers.values():
                        env.stop(process)
    finally:
        sink.close()
    print(
        f"\nCeleriac small job (2 dataset + 4 analysis tasks), metrics and tracing off vs on;"
        f" {2 * args.phases} alternating phases of {per_phase} jobs after {args.warmup} warm-up"
        f" jobs each; OTLP sink got {sink.requests} exports ({sink.bytes} bytes)\n"
    )
    print(f"{'variant':<10}{'jobs':>6}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}{'load 1m':>9}")
    p50 = {}
    for variant, found in samples.items():
        totals = sorted(s.total_ms for s in found)
        p50[variant] = statistics.median(totals)
        print(
            f"{variant:<10}{len(totals):>6}{p50[variant]:>9.1f}{percentile(totals, 0.95):>9.1f}"
            f"{percentile(totals, 0.99):>9.1f}{statistics.mean(loads[variant]):>9.2f}"
        )
    components = ("api", "orchestration", "distribution", "compute")
    print(
        "\nCPU ms per job (the platform's processes; these vary far less than the wall clock "
        "on a shared machine)"
    )
    print(f"{'variant':<10}" + "".join(f"{c:>14}" for c in components) + f"{'sum':>9}")
    per_job = {}
    for variant, spent in cpu.items():
        n = max(1, len(samples[variant]))
        values = [1000 * spent.get(c, 0.0) / n for c in components]
        per_job[variant] = sum(values)
        print(f"{variant:<10}" + "".join(f"{v:>14.1f}" for v in values) + f"{sum(values):>9.1f}")
    if per_job["off"]:
        print(f"CPU per job on / off: {per_job['on'] / per_job['off']:.3f}")
    cost = p50["on"] / p50["off"] - 1
    met = cost < OBSERVABILITY_TARGET
    print(
        f"observability cost on the p50: {cost:+.1%} (target < {OBSERVABILITY_TARGET:.0%}: "
        f"{'met' if met else 'NOT met'})"
    )
    return met


def main() -> None:
    install_signal_handlers()
    run_main(
        "latency",
        _parse_args,
        lambda args: run_observability(args) if args.observability else run(args),
        (BenchError,),
        "processes stopped, database dropped",
    )


if __name__ == "__main__":
    main()
