"""Small jobs finished per second: the default deployment against the bare canvas running
the same plugins on the same workers, in the same run (issue 16, point 2).

Run from the repository root (PostgreSQL and Redis on 127.0.0.1)::

    .venv/bin/python -m bench.throughput [--jobs 200] [--rounds 2] [--submitters 8]

The job is bench.latency's small job (100 records; datasets ``tabular`` and ``timeseries``,
analyzers ``summary`` and ``anomalies``: 2 dataset + 4 analysis tasks and a finalize). The
workers are the three pools exactly as ``celeriac up`` starts them (``celeriac worker --pool
P`` with the default concurrency: gevent 100 / 100, prefork 2), plus ``--include
bench.bare_canvas``; their compute processes are not replaced during the run (see
``--max-tasks-per-child`` in bench/kit/env.py).

Per round and design, ``--jobs`` jobs are put in at once and the bench waits for all of
them to end:

- ``celeriac``: ``POST /v1/jobs`` from ``--submitters`` threads to ``celeriac api``; a job
  has ended when its row is final (PostgreSQL, ``finished_at``);
- ``bare+plugins``: the same number of ``chord(group(2 x dataset), chord(group(4 x
  analysis), finalize))`` canvases published with Celery; a job has ended when its finalize
  result is in the Redis result backend.

Throughput is jobs / (last end - first submit); the steady rate counts the jobs that ended
between the 10th and the 90th percentile of the end times, over that interval. The
rounds alternate the designs; the table shows each round and the median. CPU per job is
read from /proc per process group (API, each pool, PostgreSQL and Redis server-wide) over
each design's phase, and the plugin CPU per job alone (no platform, in this process) from
bench.plugin_cpu's steps. Target: celeriac at least 0.7x the bare canvas and at least 60
jobs/s. Exit 0 when met, 1 when not, 2 when the set-up or a process failed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import httpx

from bench.kit.cli import BenchError, note, run_main
from bench.kit.env import (
    FINAL_STATES,
    Env,
    add_common_options,
    client_app,
    environment,
    sample_records,
    settings_from_options,
)
from bench.kit.machine import CpuMeter, loadavg, wait_for_quiet_machine
from bench.kit.report import percentile, summary, table
from bench.latency import PIPELINE, RECORDS, Bare

DATABASE = "celeriac_bench_throughput"
TARGET_RATIO = 0.7
TARGET_JOBS_PER_SECOND = 60.0
DESIGNS = ("celeriac", "bare+plugins")
COMPONENTS = ("api", "orchestration", "distribution", "compute", "postgres", "redis")
TIMEOUT_SECONDS = 600.0


@dataclass
class Round:
    design: str
    jobs: int
    started: float  # wall clock of the first submit
    ends: list[float] = field(default_factory=list)  # wall clock of each job's end
    states: dict[str, int] = field(default_factory=dict)

    @property
    def makespan(self) -> float:
        return max(self.ends) - self.started

    @property
    def rate(self) -> float:
        return self.jobs / self.makespan

    @property
    def steady_rate(self) -> float:
        ends = sorted(self.ends)
        low, high = percentile(ends, 0.1), percentile(ends, 0.9)
        inside = sum(1 for t in ends if low <= t <= high)
        return inside / (high - low) if high > low else float("nan")


def run_celeriac(env: Env, body: bytes, jobs: int, submitters: int) -> Round:
    headers = {"Authorization": f"Bearer {env.api_key}", "Content-Type": "application/json"}
    clients: list[httpx.Client] = []
    local = threading.local()  # one keep-alive client per submitting thread

    def submit(_index: int) -> str:
        client = getattr(local, "client", None)
        if client is None:
            client = local.client = httpx.Client(base_url=env.api_url, headers=headers, timeout=60)
            clients.append(client)
        answer = client.post("/v1/jobs", content=body)
        if answer.status_code != 202:
            raise BenchError(f"POST /v1/jobs answered {answer.status_code}: {answer.text[:300]}")
        return str(answer.json()["id"])

    started = time.time()
    try:
        with ThreadPoolExecutor(submitters) as pool:
            ids = list(pool.map(submit, range(jobs)))
    finally:
        for client in clients:
            client.close()
    deadline = time.monotonic() + TIMEOUT_SECONDS
    with env.db() as conn:
        while True:
            row = conn.execute(
                "SELECT count(*) FROM jobs WHERE id = ANY(%s::uuid[]) AND state = ANY(%s)",
                (ids, list(FINAL_STATES)),
            ).fetchone()
            if row and row[0] == jobs:
                break
            env.check_alive()
            if time.monotonic() > deadline:
                raise BenchError(f"{jobs - (row[0] if row else 0)} jobs did not end in time")
            time.sleep(0.05)
        rows = conn.execute(
            "SELECT state, extract(epoch FROM finished_at) FROM jobs WHERE id = ANY(%s::uuid[])",
            (ids,),
        ).fetchall()
    result = Round("celeriac", jobs, started, [float(r[1]) for r in rows])
    for state, _ in rows:
        result.states[state] = result.states.get(state, 0) + 1
    return result


def run_bare(bare: Bare, jobs: int) -> Round:
    app = client_app()
    ids = [str(uuid.uuid4()) for _ in range(jobs)]
    canvases = [bare.canvas(callback_id) for callback_id in ids]
    started = time.time()
    for canvas in canvases:
        canvas.apply_async()
    ends = []
    for callback_id in ids:
        out = app.AsyncResult(callback_id).get(timeout=TIMEOUT_SECONDS)
        ends.append(float(out["t1"]))
    return Round("bare+plugins", jobs, started, ends, {"succeeded": jobs})


def plugin_cpu_ms() -> float:
    """CPU ms of the plugin work of one small job alone, in this process (bench.plugin_cpu's
    steps on this tree's plugins, median of 20 after 5 warm-ups)."""
    # Imported here: pandas and the worker's plugins, for this one measurement only (not
    # loaded in the driver while it measures the platform).
    from bench.plugin_cpu import one_job, plugins_at  # noqa: PLC0415

    raw = json.dumps(sample_records()[:RECORDS]).encode()
    plugins = plugins_at(None)
    for _ in range(5):
        one_job(plugins, raw)
    return 1000 * statistics.median(sum(one_job(plugins, raw).values()) for _ in range(20))


def report(rounds: list[Round], meters: dict[str, CpuMeter], plugin_ms: float) -> bool:
    print(
        f"\nthroughput: {RECORDS}-record small jobs (2 dataset + 4 analysis tasks + finalize), "
        f"{rounds[0].jobs} put in at once per round; load average now {loadavg()}\n"
    )
    rows = [
        (r.design, i // len(DESIGNS) + 1, r.jobs, r.makespan, r.rate, r.steady_rate, r.states)
        for i, r in enumerate(rounds)
    ]
    print(
        table(("design", "round", "jobs", "makespan s", "jobs/s", "steady jobs/s", "states"), rows)
    )
    rate = {d: statistics.median(r.rate for r in rounds if r.design == d) for d in DESIGNS}
    steady = {d: statistics.median(r.steady_rate for r in rounds if r.design == d) for d in DESIGNS}
    print()
    print(
        table(
            ("design", "median jobs/s", "median steady jobs/s"),
            [(d, rate[d], steady[d]) for d in DESIGNS],
        )
    )
    print(
        "\nCPU ms per job over each design's phases (postgres and redis server-wide; others: "
        "busy CPU no column accounts for, i.e. other processes on this shared machine)"
    )
    cpu_rows = []
    for design in DESIGNS:
        meter = meters[design]
        jobs = sum(r.jobs for r in rounds if r.design == design)
        cpu_rows.append(
            (
                design,
                *(1000 * meter.totals.get(c, 0.0) / jobs for c in COMPONENTS),
                1000 * meter.totals.get("bench", 0.0) / jobs,
                1000 * meter.others() / jobs,
            )
        )
    print(table(("design", *COMPONENTS, "bench", "others"), cpu_rows))
    print(f"plugin CPU per job alone (no platform, bench.plugin_cpu's steps): {plugin_ms:.1f} ms")
    ratio = rate["celeriac"] / rate["bare+plugins"]
    ratio_ok = ratio >= TARGET_RATIO
    rate_ok = rate["celeriac"] >= TARGET_JOBS_PER_SECOND
    print(
        f"\nratio celeriac / bare+plugins: {ratio:.2f} (target >= {TARGET_RATIO}: "
        f"{'met' if ratio_ok else 'NOT met'}); celeriac {rate['celeriac']:.1f} jobs/s "
        f"(target >= {TARGET_JOBS_PER_SECOND:.0f}: {'met' if rate_ok else 'NOT met'})"
    )
    summary(
        "throughput",
        "small jobs finished per second",
        rate["celeriac"],
        "jobs/s",
        baseline=f"bare+plugins {rate['bare+plugins']:.1f} jobs/s",
        ratio=ratio,
        target=f">= {TARGET_RATIO}x and >= {TARGET_JOBS_PER_SECOND:.0f} jobs/s",
        met=ratio_ok and rate_ok,
    )
    states = {s for r in rounds if r.design == "celeriac" for s in r.states}
    if states != {"succeeded"}:
        print(f"WARNING: celeriac job states {sorted(states)}")
        return False
    return ratio_ok and rate_ok


def _parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=200, help="jobs per design per round")
    parser.add_argument("--rounds", type=int, default=2, help="rounds (designs alternate)")
    parser.add_argument("--warmup", type=int, default=10, help="unmeasured jobs per design")
    parser.add_argument("--submitters", type=int, default=8, help="threads posting jobs")
    add_common_options(parser)
    args = parser.parse_args()
    if args.jobs < 10 or args.rounds <= 0 or args.submitters <= 0 or args.warmup < 0:
        parser.error("--jobs >= 10, --rounds and --submitters positive, --warmup >= 0")
    return args


def run(args: argparse.Namespace) -> bool:
    records = sample_records()[:RECORDS]
    body = json.dumps({"pipeline": PIPELINE, "records": records}).encode()
    with environment(
        "throughput", DATABASE, args.log_level, settings_from_options(args), args.keep_logs
    ) as env:
        workers = env.start_workers(include=["bench.bare_canvas"])
        api = env.start_api()
        groups = {api.pid: "api", **{w.pid: pool for pool, w in workers.items()}}
        bare = Bare(records)
        note(f"warm-up: {args.warmup} jobs per design")
        if args.warmup:
            run_celeriac(env, body, args.warmup, args.submitters)
            run_bare(bare, args.warmup)
        meters = {d: CpuMeter(groups) for d in DESIGNS}
        rounds: list[Round] = []
        for index in range(args.rounds):
            for design in DESIGNS:
                wait_for_quiet_machine()
                note(f"round {index + 1}/{args.rounds}: {design}, {args.jobs} jobs")
                with meters[design]:
                    if design == "celeriac":
                        rounds.append(run_celeriac(env, body, args.jobs, args.submitters))
                    else:
                        rounds.append(run_bare(bare, args.jobs))
                env.check_alive()
        plugin_ms = plugin_cpu_ms()
        return report(rounds, meters, plugin_ms)


def main() -> None:
    run_main("throughput", _parse_args, run, on_interrupt="processes stopped, database dropped")


if __name__ == "__main__":
    main()
