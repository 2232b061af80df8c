"""Big jobs end to end at 10,000, 100,000 and 1,000,000 records: wall time, records/s,
peak memory per process and where the time goes (issue 16, point 4).

Run from the repository root (needs PostgreSQL and Redis on 127.0.0.1)::

    .venv/bin/python -m bench.bigjob [--sizes 10000,100000,1000000] [--chunks 5000]
        [--runs 3] [--big-runs 1] [--slice-records N] [--texts distinct|sample] [--py-spy DIR]

The records are tests/data/sample_1000.ndjson repeated and perturbed, deterministically:
unique ids, amounts and temperatures shifted, texts shuffled and, by default, made
distinct with a reference number (`` Ref 000042.``). The sample has only 463 distinct
texts and ``sentiment`` scores each distinct text once, so with ``--texts sample`` it is
nearly free; real reviews are all different. Every job goes in as a user would send it: an
NDJSON file (43 MB per 100,000 records) in a multipart ``POST /v1/jobs`` to ``celeriac
api``; the bench raises ``CELERIAC_API__MAX_BODY_BYTES`` above the largest file. Pipeline:
datasets ``tabular`` and ``text``; analyzers ``summary`` and ``anomalies`` (accept table),
``sentiment`` and ``keywords`` (accept text): per chunk one task per dataset, then
``summary``, ``anomalies`` and ``keywords`` on their whole dataset and ``sentiment``, which
is row-wise, in ceil(records / ``--slice-records``) slices and a merge (docs/adr/0009).

For each chunk size (``CELERIAC_JOBS__CHUNK_RECORDS``, read by the API when it cuts the
payload; the API is restarted for each) it runs one unmeasured warm-up job of 1,000
records and then, per size, ``--runs`` measured jobs (``--big-runs`` from 1,000,000 up),
one at a time, each once the machine is quiet (or after 20 s), and reads the job and task
rows (PostgreSQL) for the stage timings. Before each measured job the peak RSS of every
process of the API and the pools is reset (``/proc/PID/clear_refs``); after it, the table
shows the largest per group, PostgreSQL's largest backend and the CPU other processes on
the machine took meanwhile. Workers: the three pools with the command line ``celeriac
worker --pool P`` execs, the compute pool with prefork concurrency 2, its processes not
replaced during the run (``--max-tasks-per-child`` in bench/kit/env.py).

``--py-spy DIR`` runs one more 100,000-record job per chunk size (not in the medians) while
py-spy samples the API and the compute pool (pool processes included), keeps the raw
profiles in DIR and prints the functions where most samples were taken.

Environment (removed at the end, also on error or Ctrl-C): database
``celeriac_bench_bigjob`` (dropped and created), Redis db 2 (broker) and 3 (cache,
results), a scratch var directory. Targets: 100,000 records under 5 s; 1,000,000 under
60 s with every process under 1 GiB. Exit status 0 when every median meets its target, 1
when not, 2 when the set-up or a process failed.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench.kit.cli import BenchError, note, run_main
from bench.kit.env import (
    FINAL_STATES,
    Env,
    add_common_options,
    environment,
    sample_records,
    settings_from_options,
)
from bench.kit.machine import (
    CpuMeter,
    loadavg,
    peak_rss_mib,
    postgres_peak_rss_mib,
    reset_peak_rss,
    wait_for_quiet_machine,
)
from bench.kit.procs import Process, Profiler, summarize_profile
from bench.kit.report import summary, table

DATABASE = "celeriac_bench_bigjob"
JOB_TIMEOUT_SECONDS = 600.0
PIPELINE: dict[str, Any] = {
    "datasets": [{"name": "tabular"}, {"name": "text"}],
    "analyzers": [
        {"name": "summary"},
        {"name": "anomalies"},
        {"name": "sentiment"},
        {"name": "keywords"},
    ],
}
COMPONENTS = ("api", "orchestration", "distribution", "compute", "postgres", "redis")


# --- the records --------------------------------------------------------------------------


def make_records(count: int, distinct_texts: bool = True) -> bytes:
    """``count`` records as NDJSON: the sample repeated, each copy perturbed (same output
    on every run). The sample has only 463 distinct texts and ``sentiment`` scores each
    distinct text once, so with ``distinct_texts`` every text gets a reference number
    (`` Ref 000042.``), as real reviews are all different."""
    sample = sample_records()
    texts = [r.get("text") for r in sample]
    lines = []
    for i in range(count):
        record = json.loads(json.dumps(sample[i % len(sample)]))
        record["id"] = i + 1
        order = record.get("order")
        if isinstance(order, dict) and _number(order.get("amount")):
            order["amount"] = round(order["amount"] * (1 + ((i * 7919) % 201 - 100) / 1000), 2)
        sensor = record.get("sensor")
        if isinstance(sensor, dict) and _number(sensor.get("temperature")):
            sensor["temperature"] = round(sensor["temperature"] + ((i * 31) % 21 - 10) / 10, 2)
        if "text" in record:
            text = texts[(i * 37 + i // len(sample)) % len(sample)]
            if distinct_texts and isinstance(text, str):
                text = f"{text} Ref {i:06d}."
            record["text"] = text
        lines.append(json.dumps(record, separators=(",", ":"), ensure_ascii=False))
    return ("\n".join(lines) + "\n").encode()


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


# --- one job ------------------------------------------------------------------------------


@dataclass
class TaskRow:
    stage: str
    plugin: str
    chunk: int | None
    state: str
    started: float
    finished: float
    duration_ms: int


@dataclass
class Run:
    chunk_records: int
    index: int
    records: int = 0
    job_id: str = ""
    state: str = ""
    submitted: float = 0.0  # wall clock just before the POST
    accepted: float = 0.0  # wall clock when the 202 arrived
    seen: float = 0.0  # wall clock when the bench saw the final state
    created: float = 0.0
    running: float = 0.0
    done: float = 0.0
    tasks: list[TaskRow] = field(default_factory=list)
    cpu: dict[str, float] = field(default_factory=dict)
    peak_rss: dict[str, float] = field(default_factory=dict)  # MiB, the largest process

    @property
    def total(self) -> float:
        return self.seen - self.submitted

    def others(self) -> float:
        """CPU seconds the machine was busy beyond what the bench's processes, PostgreSQL
        and Redis used: other people's work on a shared machine."""
        ours = sum(self.cpu.get(c, 0.0) for c in (*COMPONENTS, "bench"))
        return max(0.0, self.cpu.get("machine", 0.0) - ours)

    def stage(self, stage: str) -> tuple[float, float]:
        rows = [t for t in self.tasks if t.stage == stage]
        return min(t.started for t in rows), max(t.finished for t in rows)

    def segments(self) -> dict[str, float]:
        d0, d1 = self.stage("datasets")
        a0, a1 = self.stage("analysis")
        return {
            "POST>202": self.accepted - self.submitted,
            "202>running": self.running - self.accepted,
            "running>d0": d0 - self.running,
            "datasets": d1 - d0,
            "d1>a0": a0 - d1,
            "analysis": a1 - a0,
            "a1>done": self.done - a1,
            "done>seen": self.seen - self.done,
        }


def submit(client: httpx.Client, data: bytes, run: Run) -> None:
    files = {"file": ("records.ndjson", data, "application/x-ndjson")}
    form = {"pipeline": json.dumps(PIPELINE)}
    run.submitted = time.time()
    answer = client.post("/v1/jobs", files=files, data=form)
    run.accepted = time.time()
    if answer.status_code != 202:
        raise BenchError(f"POST /v1/jobs answered {answer.status_code}: {answer.text[:500]}")
    run.job_id = answer.json()["id"]


def wait_final(env: Env, run: Run, poll_seconds: float = 0.02) -> None:
    with env.db() as conn:
        while True:
            row = conn.execute("SELECT state FROM jobs WHERE id = %s", (run.job_id,)).fetchone()
            if row is not None and row[0] in FINAL_STATES:
                run.seen = time.time()
                run.state = row[0]
                return
            # 600 s, and 2 ms per record beyond 300,000 (a loaded machine, a 1M job)
            timeout = max(JOB_TIMEOUT_SECONDS, run.records * 0.002)
            if time.time() - run.submitted > timeout:
                raise BenchError(
                    f"job {run.job_id} did not end in {timeout:.0f} s\n"
                    + env.diagnose_job(run.job_id)
                )
            env.check_alive()
            time.sleep(poll_seconds)


def read_rows(env: Env, run: Run) -> None:
    with env.db() as conn:
        job = conn.execute(
            "SELECT extract(epoch FROM created_at), extract(epoch FROM started_at), "
            "extract(epoch FROM finished_at) FROM jobs WHERE id = %s",
            (run.job_id,),
        ).fetchone()
        assert job is not None
        run.created, run.running, run.done = (float(v) for v in job)
        rows = conn.execute(
            "SELECT stage, plugin, chunk, state, extract(epoch FROM started_at), "
            "extract(epoch FROM finished_at), duration_ms FROM job_tasks WHERE job_id = %s",
            (run.job_id,),
        ).fetchall()
    run.tasks = [
        TaskRow(r[0], r[1], r[2], r[3], float(r[4]), float(r[5]), int(r[6] or 0)) for r in rows
    ]


def one_job(env: Env, client: httpx.Client, data: bytes, run: Run) -> Run:
    submit(client, data, run)
    wait_final(env, run)
    read_rows(env, run)
    return run


def measured_job(
    env: Env, client: httpx.Client, data: bytes, run: Run, groups: dict[int, str]
) -> Run:
    busy = wait_for_quiet_machine()
    if busy > 30:
        note(f"  the machine is {busy:.0f}% busy (of one core) before this run")
    meter = CpuMeter(groups)
    reset_peak_rss(list(groups))
    with meter:
        one_job(env, client, data, run)
    run.cpu = {**meter.totals, "wall": meter.wall}
    for pgid, name in groups.items():
        run.peak_rss[name] = max(peak_rss_mib(pgid).values(), default=0.0)
    run.peak_rss["postgres"] = postgres_peak_rss_mib()
    run.peak_rss["bench"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return run


def profiled_job(
    env: Env,
    client: httpx.Client,
    data: bytes,
    run: Run,
    groups: dict[int, str],
    out: Path,
    targets: dict[str, Process],
) -> Run:
    profilers = [
        Profiler(target, out / f"bigjob-{run.chunk_records}-{name}.txt")
        for name, target in targets.items()
    ]
    time.sleep(1.0)  # py-spy attaches
    try:
        return measured_job(env, client, data, run, groups)
    finally:
        for profiler in profilers:
            profiler.stop()


# --- report -------------------------------------------------------------------------------


def print_run(run: Run, records: int) -> None:
    segs = run.segments()
    others = 100 * run.others() / run.cpu.get("wall", run.total)
    print(
        f"{records:>8}{run.chunk_records:>7}{run.index:>4}  {run.state:<10}"
        + "".join(f"{v:>10.2f}" for v in segs.values())
        + f"{run.total:>9.2f}{records / run.total:>8.0f}{others:>8.0f}%",
        flush=True,
    )


def print_header() -> None:
    names = (
        "POST>202",
        "202>run",
        "run>d0",
        "datasets",
        "d1>a0",
        "analysis",
        "a1>done",
        "done>seen",
    )
    print(
        "\n(seconds; d0/d1: first dataset task start / last end, a0/a1: the same for "
        "analysis; others: CPU other processes on the machine used meanwhile, % of one core)"
    )
    print(
        f"{'records':>8}{'chunk':>7}{'run':>4}  {'state':<10}"
        + "".join(f"{n:>10}" for n in names)
        + f"{'total s':>9}{'rec/s':>8}{'others':>9}"
    )


def _label(task: TaskRow, sliced: set[str]) -> str:
    """The plugin, and for a row-wise analyzer run in slices which of its tasks."""
    if task.stage != "analysis" or task.plugin not in sliced:
        return task.plugin
    return f"{task.plugin}/{'slice' if task.chunk is not None else 'merge'}"


def print_tasks(run: Run, which: str) -> None:
    print(
        f"\n  tasks of {run.records} records, chunk {run.chunk_records}, {which} (run {run.index}, "
        f"job {run.job_id}): "
        "seconds per task"
    )
    print(
        f"  {'stage':<10}{'plugin':<16}{'tasks':>6}{'mean':>8}{'max':>8}{'sum':>8}"
        f"{'first start':>13}{'last end':>10}   (s after POST)"
    )
    groups: dict[tuple[str, str], list[TaskRow]] = {}
    sliced = {t.plugin for t in run.tasks if t.stage == "analysis" and t.chunk is not None}
    for task in run.tasks:
        groups.setdefault((task.stage, _label(task, sliced)), []).append(task)
    for (stage, plugin), rows in sorted(
        groups.items(), key=lambda kv: min(t.started for t in kv[1])
    ):
        durations = [t.duration_ms / 1000 for t in rows]
        states = {t.state for t in rows}
        flag = "" if states == {"succeeded"} else f"  states {sorted(states)}"
        print(
            f"  {stage:<10}{plugin:<16}{len(rows):>6}{statistics.fmean(durations):>8.2f}"
            f"{max(durations):>8.2f}{sum(durations):>8.2f}"
            f"{min(t.started for t in rows) - run.submitted:>13.2f}"
            f"{max(t.finished for t in rows) - run.submitted:>10.2f}{flag}"
        )
    busy = sum(t.duration_ms for t in run.tasks) / 1000
    print(
        f"  compute task-seconds {busy:.1f} over {run.total:.1f} s wall: "
        f"{100 * busy / (2 * run.total):.0f}% of 2 compute processes"
    )
    cpu = run.cpu
    wall = cpu.get("wall", run.total)
    print(
        "  CPU seconds during the run: "
        + ", ".join(f"{c} {cpu.get(c, 0.0):.1f}" for c in (*COMPONENTS, "bench"))
        + f"; machine busy {cpu.get('machine', 0.0):.1f} of {2 * wall:.1f} core-s, of which "
        f"{run.others():.1f} by other processes"
    )


# --- main ---------------------------------------------------------------------------------


def _parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--sizes",
        default="10000,100000,1000000",
        help="job sizes in records, comma separated (each an NDJSON file upload)",
    )
    parser.add_argument(
        "--chunks",
        default="5000",
        help="chunk sizes (CELERIAC_JOBS__CHUNK_RECORDS; the platform's default 5000), comma "
        "separated",
    )
    parser.add_argument(
        "--runs", type=int, default=3, help="measured jobs per size under 1,000,000 records"
    )
    parser.add_argument(
        "--big-runs", type=int, default=1, help="measured jobs per size of 1,000,000 or more"
    )
    parser.add_argument(
        "--slice-records",
        type=int,
        default=None,
        metavar="N",
        help="CELERIAC_JOBS__SLICE_RECORDS for the API (default: the platform's, 25000): "
        "sentiment runs as ceil(records / N) slices and a merge",
    )
    parser.add_argument(
        "--texts",
        choices=["distinct", "sample"],
        default="distinct",
        help="make every text distinct (default), or keep the sample's 463",
    )
    parser.add_argument(
        "--py-spy",
        type=Path,
        default=None,
        metavar="DIR",
        help="profile the API and compute pool in one more run per chunk size",
    )
    add_common_options(parser)
    args = parser.parse_args()
    try:
        args.chunk_sizes = [int(c) for c in args.chunks.split(",") if c.strip()]
        args.record_sizes = [int(c) for c in args.sizes.split(",") if c.strip()]
    except ValueError:
        parser.error("--chunks and --sizes must be comma-separated integers")
    if (
        args.runs <= 0
        or args.big_runs <= 0
        or not args.chunk_sizes
        or not args.record_sizes
        or min(args.chunk_sizes + args.record_sizes) <= 0
    ):
        parser.error("--runs, --big-runs, the sizes and the chunk sizes must be positive")
    if args.slice_records is not None and args.slice_records <= 0:
        parser.error("--slice-records must be positive")
    return args


BIG = 1_000_000
TARGETS = {100_000: 5.0, 1_000_000: 60.0}  # seconds (issue 16, point 4)
TARGET_RSS_MIB = 1024.0


def run(args: argparse.Namespace) -> bool:
    datasets: dict[int, bytes] = {}
    for size in args.record_sizes:
        note(f"generating {size} records ...")
        datasets[size] = make_records(size, distinct_texts=args.texts == "distinct")
    warmup = make_records(1000)
    body_limit = max(10 * 1024 * 1024, int(max(len(d) for d in datasets.values()) * 1.2))
    print(
        f"bigjob: sizes {', '.join(f'{n} ({len(d) / 1e6:.1f} MB)' for n, d in datasets.items())}"
        f" NDJSON, {args.texts} texts (multipart file upload; CELERIAC_API__MAX_BODY_BYTES="
        f"{body_limit}); pipeline datasets [tabular, text] x analyzers [summary, anomalies | "
        "sentiment, keywords]; compute pool prefork -c 2; slice records "
        f"{args.slice_records if args.slice_records is not None else 'default (25000)'}; "
        f"load average {loadavg()}"
    )
    if args.py_spy is not None:
        args.py_spy.mkdir(parents=True, exist_ok=True)
    results: dict[tuple[int, int], list[Run]] = {}
    profiles: dict[tuple[int, int], Run] = {}
    with environment(
        "bigjob", DATABASE, args.log_level, settings_from_options(args), args.keep_logs
    ) as env:
        workers = env.start_workers(concurrency={"compute": 2})
        api: Process | None = None
        print_header()
        for chunk in args.chunk_sizes:
            if api is not None:
                env.stop(api)
            api_env = {
                "CELERIAC_API__MAX_BODY_BYTES": str(body_limit),
                "CELERIAC_JOBS__CHUNK_RECORDS": str(chunk),
            }
            if args.slice_records is not None:
                api_env["CELERIAC_JOBS__SLICE_RECORDS"] = str(args.slice_records)
            api = env.start_api(api_env)
            groups = {api.pid: "api", **{w.pid: pool for pool, w in workers.items()}}
            headers = {"Authorization": f"Bearer {env.api_key}"}
            with httpx.Client(base_url=env.api_url, headers=headers, timeout=600) as client:
                one_job(env, client, warmup, Run(chunk, 0))
                for size, data in datasets.items():
                    key = (size, chunk)
                    results[key] = []
                    for index in range(1, (args.big_runs if size >= BIG else args.runs) + 1):
                        result = measured_job(env, client, data, Run(chunk, index, size), groups)
                        results[key].append(result)
                        print_run(result, size)
                    if args.py_spy is not None and size == 100_000:
                        profiles[key] = profiled_job(
                            env,
                            client,
                            data,
                            Run(chunk, 0, size),
                            groups,
                            args.py_spy,
                            {"api": api, "compute": workers["compute"]},
                        )
        return report(results, profiles, args)


def report(
    results: dict[tuple[int, int], list[Run]],
    profiles: dict[tuple[int, int], Run],
    args: argparse.Namespace,
) -> bool:
    for key, runs in results.items():
        ordered = sorted(runs, key=lambda r: r.total)
        print_tasks(ordered[len(ordered) // 2], "the median run")
        if key in profiles:
            profiled = profiles[key]
            print(
                f"\n  py-spy (100 samples/s per process), an extra run of {key[0]} records, "
                f"chunk {key[1]}, not in the medians: {profiled.total:.1f} s"
            )
            for name in ("api", "compute"):
                summarize_profile(args.py_spy / f"bigjob-{key[1]}-{name}.txt")
    print(f"\nmedian per size and chunk size; load average now {loadavg()}")
    processes = ("api", "orchestration", "distribution", "compute", "postgres")
    rows = []
    ok = True
    rates: dict[tuple[int, int], float] = {}
    for (size, chunk), runs in results.items():
        total = statistics.median(r.total for r in runs)
        rates[(size, chunk)] = size / total
        rss = {p: max(r.peak_rss.get(p, 0.0) for r in runs) for p in processes}
        limit = TARGETS.get(size)
        met = all(r.state == "succeeded" for r in runs)
        if limit is not None:
            met = met and total < limit
        if size >= BIG:
            met = met and max(rss[p] for p in processes if p != "postgres") < TARGET_RSS_MIB
        ok = ok and met
        target = f"< {limit:.0f} s" if limit else "-"
        if size >= BIG:
            target += f", < {TARGET_RSS_MIB:.0f} MiB"
        others = statistics.median(100 * r.others() / r.cpu.get("wall", r.total) for r in runs)
        rows.append(
            (
                size,
                chunk,
                len(runs),
                statistics.median(r.segments()["POST>202"] for r in runs),
                total,
                f"{size / total:,.0f}",
                *(f"{rss[p]:.0f}" for p in processes),
                f"{others:.0f}%",
                target,
                "met" if met else "NOT met",
            )
        )
    print(
        table(
            (
                "records",
                "chunk",
                "runs",
                "submit s",
                "total s",
                "records/s",
                *(f"{p[:5]} MiB" for p in processes),
                "others",
                "target",
                "verdict",
            ),
            rows,
            8,
        )
    )
    print(
        "(peak RSS: the largest process of each group during the run, VmHWM reset before it; "
        "postgres: the largest backend, shared buffers it touched included)"
    )
    for (size, chunk), rate in rates.items():
        limit = TARGETS.get(size)
        summary(
            "bigjob",
            f"{size} records, chunk {chunk}",
            size / rate,
            "s",
            baseline=f"{rate:,.0f} records/s",
            target=f"< {limit:.0f} s" if limit else "",
            met=(size / rate < limit) if limit else None,
        )
    return ok


def main() -> None:
    run_main("bigjob", _parse_args, run, on_interrupt="processes stopped, database dropped")


if __name__ == "__main__":
    main()
