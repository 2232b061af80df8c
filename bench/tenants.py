"""Throughput and dispatch latency with 10, 1,000 and 10,000 active tenants, fair dispatch
(hierarchical, issue 13) against the band-first design it replaced and, when asked,
kombu's BRPOP over every tenant queue, in the same run.

Run from the repository root (needs Redis on 127.0.0.1:6379; uses dbs 4 and 5)::

    flock /tmp/celeriac-bench.lock .venv/bin/python -m bench.tenants
        [--tenants 10,1000,10000] [--tasks 3000] [--drain-seconds 30]
        [--latency-seconds 4] [--rounds 1] [--designs fair,band-first[,naive]]

Target (issue 13, point 8): with fair dispatch, at 10,000 tenants at least 80 % of the
throughput at 10.

Designs, each with one compute worker (prefork, two processes, ``-O fair``, prefetch 1):

- fair (ours): tasks are published with ``celeriac.platform.tasks.publish``: pushed to the
  tenant's queue ``compute.normal.<tenant>``, then the dispatcher's Lua script releases
  tenant backlogs (weighted round-robin over tenants, then the tenant's band) into the
  ready queue ``compute``, the only queue the worker consumes; the worker releases again
  each time it receives a task.
- band-first: the same with the release script of before issue 13 (``bench/band_first.py``,
  kept for this comparison only): band first, round-robin within a band.
- naive: the same worker subscribed to every tenant queue of the pool (3 bands x N
  tenants), tasks sent straight to ``compute.normal.<tenant>``, no dispatcher in between:
  kombu's BRPOP then names every queue (x 4 priority sub-lists) on each fetch. The worker
  code is the same, so its ``task_received`` release still runs (on empty rings).

Per design and tenant count, with a fresh worker and broker db:

1. throughput: ``--tasks`` no-op tasks, or twice the tenant count if that is more (so
   that every tenant stays active through the measurement), plus 100 warm-up ones,
   round-robin over the tenants, are queued before the worker starts; tasks/s counts
   from the 100th start to the last (or to ``--drain-seconds`` later, then the rest of
   the backlog is deleted);
2. dispatch latency: then, open loop, a task every 1/r seconds for ``--latency-seconds``,
   r = half the throughput just measured, round-robin over the tenants; the latency is a
   task's start minus its publish (``delay_ms`` that the no-op logs).

Each run prints its own row. Throughput moves with whatever else the machine runs (the
"other %" column shows it): ``--rounds N`` repeats the whole sequence, interleaved, and the
target is then judged on medians.

A second table shows where the time went during the throughput phase: CPU of the worker's
main process (which fetches from Redis and runs the release), of its two pool processes
and of Redis, and Redis' own count and time per call of the commands involved (Redis'
statistics are server-wide: other users of this Redis are counted too).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import dataclass

from bench.band_first import BAND_FIRST, use_design
from bench.kit.cli import BenchError, install_signal_handlers, note
from bench.kit.machine import wait_for_quiet_machine
from bench.kit.queueing import (
    BAND_FIRST_APP,
    POOL_QUEUE,
    STARTUP_TIMEOUT_SECONDS,
    WORKER_APP,
    BenchEnv,
    Publisher,
    Usage,
    WorkerLog,
    WorkerReading,
    bench_env,
    wait_for,
)
from bench.kit.report import percentile, summary
from celeriac.platform.queues import BANDS

WARMUP_TASKS = 100
TARGET_RATIO = 0.8
BRIEF_NAIVE = {10: 481, 100: 388, 1000: 97}  # tasks/s, one queue per tenant (not three)


@dataclass
class Run:
    round: int
    design: str
    tenants: int
    queues: int
    tasks: int
    tasks_per_second: float
    publish_per_second: float
    drained: bool
    rate: float
    latencies: list[float]
    usage: Usage
    usage_tasks: int
    latency_usage: Usage


def tenant_slugs(count: int) -> list[str]:
    return [f"t{i:04d}" for i in range(count)]


def purge_backlog(bench: BenchEnv) -> int:
    """Delete every queued compute task (tenant queues, rings, ready queue); returns how
    many keys went."""
    keys = list(bench.broker.scan_iter(match="compute.*", count=1000))
    keys += list(bench.broker.scan_iter(match="celeriac:ring*", count=1000))
    keys += list(bench.broker.scan_iter(match="celeriac:fair-*", count=1000))
    keys.append(POOL_QUEUE.encode())
    return int(bench.broker.delete(*keys))


def run(
    bench: BenchEnv, design: str, tenants: int, args: argparse.Namespace, round_: int = 1
) -> Run:
    bench.flush()
    slugs = tenant_slugs(tenants)
    publisher = Publisher()
    use_design(design if design == BAND_FIRST else "fair")
    if design in ("fair", BAND_FIRST):
        queues = [POOL_QUEUE]

        def send(i: int, label: str) -> None:
            publisher.fair(slugs[i % tenants], label)

    else:
        queues = [f"{POOL_QUEUE}.{band.value}.{slug}" for slug in slugs for band in BANDS]

        def send(i: int, label: str) -> None:
            slug = slugs[i % tenants]
            publisher.direct(f"{POOL_QUEUE}.normal.{slug}", slug, label)

    total = WARMUP_TASKS + max(args.tasks, 2 * tenants)
    wait_for_quiet_machine(10.0, 40.0)
    note(f"{design} x {tenants} tenants: queueing {total} tasks ...")
    began = time.perf_counter()
    for i in range(total):
        send(i, f"tp-{i}")
    publish_per_second = total / (time.perf_counter() - began)

    app = BAND_FIRST_APP if design == BAND_FIRST else WORKER_APP
    worker = bench.start_worker(f"{design}-{tenants}", queues, app)
    log = WorkerLog(worker.log_path)
    if not wait_for(
        lambda: log.count("tp-") >= WARMUP_TASKS,
        STARTUP_TIMEOUT_SECONDS,
        "the worker to start",
        worker,
        log,
    ):
        raise BenchError(f"worker {worker.name} ran no task:\n{worker.log_tail()}")
    before = WorkerReading.take(worker, bench.broker)
    started_before = log.count("tp-")
    drained = wait_for(
        lambda: log.count("tp-") >= total, args.drain_seconds, "the backlog to drain", worker, log
    )
    after = WorkerReading.take(worker, bench.broker)
    usage = Usage.between(before, after)
    usage_tasks = log.count("tp-") - started_before
    if not drained:
        note(f"  {purge_backlog(bench)} backlog keys deleted")
        time.sleep(1.0)
    starts = sorted(publisher.started_at(log, label) for label in log.starts if label[:3] == "tp-")
    measured = starts[WARMUP_TASKS - 1 :]
    tasks_per_second = (len(measured) - 1) / (measured[-1] - measured[0])

    rate = max(5.0, tasks_per_second / 2)
    count = int(min(2000, max(20, rate * args.latency_seconds)))
    note(f"  {tasks_per_second:.0f} tasks/s; latency: {count} tasks at {rate:.0f}/s ...")
    interval = 1 / rate
    latency_before = WorkerReading.take(worker, bench.broker)
    began = time.perf_counter()
    for i in range(count):
        pause = began + i * interval - time.perf_counter()
        if pause > 0:
            time.sleep(pause)
        send(i + 7, f"lat-{i}")
    latency_usage = Usage.between(latency_before, WorkerReading.take(worker, bench.broker))
    wait_for(
        lambda: log.count("lat-") >= count,
        args.latency_seconds + 60,
        "the latency tasks to start",
        worker,
        log,
    )
    latencies = [log.starts[label].delay_ms for label in log.starts if label[:4] == "lat-"]
    if len(latencies) < count:
        note(f"  only {len(latencies)} of {count} latency tasks started")
    if log.problems:
        note(f"  worker warnings: {len(log.problems)}, first: {log.problems[0]}")
    bench.stop_workers()
    return Run(
        round=round_,
        design=design,
        tenants=tenants,
        queues=len(queues),
        tasks=len(measured),
        tasks_per_second=tasks_per_second,
        publish_per_second=publish_per_second,
        drained=drained,
        rate=rate,
        latencies=latencies,
        usage=usage,
        usage_tasks=usage_tasks,
        latency_usage=latency_usage,
    )


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def print_tables(runs: list[Run]) -> bool:
    fewest = min(r.tenants for r in runs)
    configs = list(dict.fromkeys((r.design, r.tenants) for r in runs))
    median_tps = {
        c: _median([r.tasks_per_second for r in runs if (r.design, r.tenants) == c])
        for c in configs
    }
    base = {design: median_tps[(design, n)] for design, n in configs if n == fewest}
    print()
    print("Throughput and dispatch latency, one compute worker (prefork -c2, -O fair, prefetch 1)")
    print()
    header = (
        f"{'round':>5} | {'design':<10} | {'tenants':>7} | {'queues':>6} | {'tasks':>6} | "
        f"{'tasks/s':>7} | {f'vs {fewest}':>6} | {'lat. rate/s':>11} | {'n':>4} | "
        f"{'p50 ms':>7} | {'p99 ms':>7}"
    )
    print(header)
    print("-" * len(header))
    for r in runs:
        cut = "" if r.drained else " (stopped at deadline)"
        print(
            f"{r.round:>5} | {r.design:<10} | {r.tenants:>7} | {r.queues:>6} | {r.tasks:>6} | "
            f"{r.tasks_per_second:>7.0f} | {r.tasks_per_second / base[r.design]:>6.2f} | "
            f"{r.rate:>11.0f} | {len(r.latencies):>4} | {percentile(r.latencies, 0.5):>7.1f} | "
            f"{percentile(r.latencies, 0.99):>7.1f}{cut}"
        )
    print()
    print("Where the time went while draining (CPU in % of one core; Redis calls per task")
    print("started and microseconds per call, from Redis' server-wide command statistics)")
    print()
    header = (
        f"{'round':>5} | {'design':<10} | {'tenants':>7} | {'CPU ms/task':>11} | {'main %':>6} | "
        f"{'pool %':>6} | {'redis %':>7} | {'other %':>7} | {'EVALSHA/task':>12} | "
        f"{'us each':>7} | {'BRPOP/task':>10} | {'us each':>7} | {'publish/s':>9} | "
        f"{'other % (lat.)':>14}"
    )
    print(header)
    print("-" * len(header))
    for r in runs:
        evalsha = r.usage.per_task("evalsha", r.usage_tasks)
        brpop = r.usage.per_task("brpop", r.usage_tasks)
        print(
            f"{r.round:>5} | {r.design:<10} | {r.tenants:>7} | "
            f"{r.usage.cpu_ms_per_task(r.usage_tasks):>11.2f} | {r.usage.main_pct:>6.0f} | "
            f"{r.usage.children_pct:>6.0f} | {r.usage.redis_pct:>7.0f} | "
            f"{r.usage.other_pct:>7.0f} | {evalsha[0]:>12.2f} | {evalsha[1]:>7.0f} | "
            f"{brpop[0]:>10.2f} | {brpop[1]:>7.0f} | {r.publish_per_second:>9.0f} | "
            f"{r.latency_usage.other_pct:>14.0f}"
        )
    rounds = max(r.round for r in runs)
    if rounds > 1:
        print()
        print(f"Medians over {rounds} rounds")
        header = (
            f"{'design':<10} | {'tenants':>7} | {'tasks/s':>7} | {f'vs {fewest}':>6} | "
            f"{'CPU ms/task':>11} | {'p50 ms':>7} | {'p99 ms':>7}"
        )
        print(header)
        print("-" * len(header))
        for design, n in configs:
            mine = [r for r in runs if (r.design, r.tenants) == (design, n)]
            cpu = _median([r.usage.cpu_ms_per_task(r.usage_tasks) for r in mine])
            p50 = _median([percentile(r.latencies, 0.5) for r in mine])
            p99 = _median([percentile(r.latencies, 0.99) for r in mine])
            tps = median_tps[(design, n)]
            print(
                f"{design:<10} | {n:>7} | {tps:>7.0f} | {tps / base[design]:>6.2f} | "
                f"{cpu:>11.2f} | {p50:>7.1f} | {p99:>7.1f}"
            )
    print()
    print(
        "publish/s: how fast this process queued the backlog (fair: send_task plus one "
        "release per task; naive: send_task)."
    )
    print(
        "CPU ms/task: worker (main + pool processes) and Redis CPU time per task drained: "
        "less moved than tasks/s by others' load, but not immune to it."
    )
    print(
        "other %: busy time of everything on the machine but the worker, Redis and this "
        "process (two cores in all: 200 %), while draining and during the latency phase; "
        "high means a noisy measurement."
    )
    naive = ", ".join(f"{n}: {v}" for n, v in BRIEF_NAIVE.items())
    print(
        f"The brief's naive figures ({naive} tasks/s) were for one queue per tenant; here "
        "each tenant has three (high, normal, low), as the product's tenant queues do."
    )
    most = max(r.tenants for r in runs)
    if ("fair", fewest) in median_tps and ("fair", most) in median_tps and most > fewest:
        ratio = median_tps[("fair", most)] / median_tps[("fair", fewest)]
        cost = [
            _median(
                [
                    r.usage.cpu_ms_per_task(r.usage_tasks)
                    for r in runs
                    if (r.design, r.tenants) == ("fair", n)
                ]
            )
            for n in (fewest, most)
        ]
        met = ratio >= TARGET_RATIO
        summary(
            "tenants",
            f"fair dispatch at {most:,} tenants",
            ratio * 100,
            f"% of {fewest}",
            baseline=f"fair at {fewest} tenants",
            ratio=ratio,
            target=f">= {TARGET_RATIO:.0%}",
            met=met,
        )
        print(
            f"Target: fair at {most:,} tenants >= {TARGET_RATIO:.0%} of fair at {fewest}"
            f"{' (medians)' if rounds > 1 else ''}: {ratio:.0%} -> "
            f"{'met' if met else 'NOT met'} (CPU per task at {most:,}: "
            f"{cost[1] / cost[0]:.0%} of that at {fewest})"
        )
        return met
    return True


def main() -> None:
    install_signal_handlers()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tenants", default="10,1000,10000", help="comma-separated counts")
    parser.add_argument(
        "--designs",
        default=f"fair,{BAND_FIRST}",
        help=f"of fair, {BAND_FIRST} and naive (BRPOP over every tenant queue)",
    )
    parser.add_argument("--tasks", type=int, default=3000, help="measured tasks per run")
    parser.add_argument(
        "--drain-seconds", type=float, default=30.0, help="then the rest is deleted"
    )
    parser.add_argument("--latency-seconds", type=float, default=4.0)
    parser.add_argument(
        "--rounds", type=int, default=1, help="repeat everything; medians decide the target"
    )
    args = parser.parse_args()
    counts = [int(n) for n in args.tenants.split(",")]
    designs = args.designs.split(",")
    runs = []
    began = time.monotonic()
    try:
        with bench_env("tenants") as bench:
            for round_ in range(1, args.rounds + 1):
                for tenants in counts:
                    for design in designs:
                        runs.append(run(bench, design, tenants, args, round_))
    except BenchError as exc:
        print(f"bench failed: {exc}", file=sys.stderr)
        sys.exit(2)
    note(f"done in {time.monotonic() - began:.0f} s")
    sys.exit(0 if print_tables(runs) else 1)


if __name__ == "__main__":
    main()
