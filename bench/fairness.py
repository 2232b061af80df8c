"""A quiet tenant's latency while a noisy tenant has 5,000 queued jobs: fair dispatch
against one shared FIFO queue, next to the quiet tenant alone, in the same run.

Run from the repository root (needs Redis on 127.0.0.1:6379; uses dbs 4 and 5)::

    .venv/bin/python bench/fairness.py [--backlog 5000] [--quiet 100] [--interval-ms 20]
        [--work-ms 5]

Target (issue 4, pt 19): under noise, the quiet tenant's p95 job latency (publish -> task
end) within 2x of its p95 with no noise; the start delay's ratio is printed beside it.

The jobs are no-op compute tasks (``celeriac.compute.noop`` sleeping ``--work-ms``), so
this measures the scheduling layer alone: a real job goes through the orchestration canvas
too, which adds a constant cost per job to every scenario. One compute worker (prefork,
two processes, ``-O fair``, prefetch 1), fresh for each scenario:

- fair, quiet alone: the quiet tenant publishes ``--quiet`` tasks, one every
  ``--interval-ms``, through ``celeriac.platform.tasks.publish`` (its tenant queue, then
  the dispatcher's release into the ready queue ``compute``);
- fair, quiet + noisy backlog: first the noisy tenant publishes ``--backlog`` tasks the
  same way, then the worker starts; once it has run 50 of them the quiet tenant publishes
  as above while the backlog is still there;
- shared FIFO queue: the same two streams in the same order, both sent straight to the
  one queue ``compute`` (no tenant queues, no dispatcher): the quiet tenant's tasks wait
  behind what is left of the backlog.

Every task sleeps ``--work-ms``: a no-op would be drained faster than the backlog can be
measured against. For each quiet task the bench records its start delay (start minus
publish, which the no-op logs), its completion (start delay plus the run time Celery
logs) and how many other tasks started between its publish and its start.
"""

from __future__ import annotations

import argparse
import bisect
import sys
import time
from dataclasses import dataclass

from common import percentile
from queue_bench import (
    POOL_QUEUE,
    STARTUP_TIMEOUT_SECONDS,
    BenchEnv,
    BenchError,
    Probe,
    Publisher,
    Usage,
    WorkerLog,
    bench_env,
    install_signal_handlers,
    note,
    wait_for,
    wait_for_quiet_machine,
)

TARGET_RATIO = 2.0
WARM_STARTS = 50
QUIET = "quiet"
NOISY = "noisy"


@dataclass
class Scenario:
    name: str
    design: str  # "fair" or "fifo"
    noise: bool


SCENARIOS = [
    Scenario("fair: quiet alone", "fair", noise=False),
    Scenario("fair: quiet + noisy backlog", "fair", noise=True),
    Scenario("shared FIFO: quiet + noisy backlog", "fifo", noise=True),
]


@dataclass
class Result:
    scenario: Scenario
    delays: list[float]
    completions: list[float]
    ahead: list[int]
    backlog_before: int
    backlog_after: int
    noisy_per_second: float
    usage: Usage


def backlog(bench: BenchEnv, design: str) -> int:
    """Tasks still queued: the noisy backlog, plus quiet tasks waiting in the ready queue
    (at most a couple under fair dispatch; in the shared FIFO queue, all that wait)."""
    keys = [POOL_QUEUE] + ([f"{POOL_QUEUE}.normal.{NOISY}"] if design == "fair" else [])
    return sum(int(bench.broker.llen(key)) for key in keys)


def run(bench: BenchEnv, scenario: Scenario, args: argparse.Namespace) -> Result:
    bench.flush()
    publisher = Publisher()

    def send(tenant: str, label: str) -> None:
        if scenario.design == "fair":
            publisher.fair(tenant, label, args.work_ms)
        else:
            publisher.direct(POOL_QUEUE, tenant, label, args.work_ms)

    wait_for_quiet_machine()
    note(f"{scenario.name} ...")
    if scenario.noise:
        for i in range(args.backlog):
            send(NOISY, f"noisy-{i}")
    worker = bench.start_worker(scenario.design, [POOL_QUEUE])
    log = WorkerLog(worker.log_path)
    if scenario.noise:
        warm = "noisy-"
    else:
        warm = "warm-"
        for i in range(4):
            send("warm", f"warm-{i}")
    if not wait_for(
        lambda: log.count(warm) >= (WARM_STARTS if scenario.noise else 4),
        STARTUP_TIMEOUT_SECONDS, "the worker to start", worker, log,
    ):  # fmt: skip
        raise BenchError(f"worker {worker.name} ran no task:\n{worker.log_tail()}")
    time.sleep(0.2)

    backlog_before = backlog(bench, scenario.design)
    before = Probe.take(worker, bench.broker)
    noisy_before = log.count("noisy-")
    interval = args.interval_ms / 1000
    began = time.perf_counter()
    for i in range(args.quiet):
        pause = began + i * interval - time.perf_counter()
        if pause > 0:
            time.sleep(pause)
        send(QUIET, f"quiet-{i}")
    publish_seconds = time.perf_counter() - began
    after = Probe.take(worker, bench.broker)
    log.poll()
    noisy_per_second = (log.count("noisy-") - noisy_before) / publish_seconds
    backlog_after = backlog(bench, scenario.design)
    quiet = [f"quiet-{i}" for i in range(args.quiet)]
    wait_for(
        lambda: all(label in log.starts for label in quiet)
        and all(log.starts[label].task_id in log.runtimes for label in quiet),
        args.backlog * (args.work_ms + 10) / 1000 + 60, "the quiet tasks to run", worker, log,
    )  # fmt: skip
    if log.problems:
        note(f"  worker warnings: {len(log.problems)}, first: {log.problems[0]}")
    bench.stop_workers()

    ran = [label for label in quiet if label in log.starts]
    if len(ran) < len(quiet):
        note(f"  only {len(ran)} of {len(quiet)} quiet tasks started")
    delays = [log.starts[label].delay_ms for label in ran]
    completions = [
        log.starts[label].delay_ms + 1000 * log.runtimes[log.starts[label].task_id]
        for label in ran
        if log.starts[label].task_id in log.runtimes
    ]
    starts = sorted(publisher.started_at(log, label) for label in log.starts)
    ahead = []
    for label in ran:
        sent, started = publisher.sent_at[label], publisher.started_at(log, label)
        ahead.append(bisect.bisect_left(starts, started) - bisect.bisect_right(starts, sent))
    return Result(
        scenario=scenario,
        delays=delays,
        completions=completions,
        ahead=ahead,
        backlog_before=backlog_before,
        backlog_after=backlog_after,
        noisy_per_second=noisy_per_second,
        usage=Usage.between(before, after),
    )


def _row(name: str, values: list[float], baseline: float, extra: str) -> str:
    p95 = percentile(values, 0.95)
    return (
        f"{name:<34} | {len(values):>3} | {percentile(values, 0.5):>8.1f} | {p95:>8.1f} | "
        f"{percentile(values, 0.99):>8.1f} | {p95 / baseline:>8.2f}x{extra}"
    )


def print_tables(results: list[Result], args: argparse.Namespace) -> bool:
    alone = results[0]
    print()
    print(
        f"Quiet tenant ({args.quiet} tasks, one every {args.interval_ms} ms) with and without a "
        f"noisy tenant's {args.backlog}-task backlog;"
    )
    print(
        f"one compute worker (prefork -c2, -O fair, prefetch 1); every task, noisy and quiet, "
        f"is celeriac.compute.noop with work_ms={args.work_ms}: it sleeps that long, so that "
    )
    print(
        "the backlog lasts through the measurement (a bare no-op drains it in seconds) and "
        "a task slot has a known length."
    )
    print(
        "This measures the scheduling layer only: a real job also goes through the "
        "orchestration canvas, a constant cost per job in every scenario."
    )
    for title, pick in (
        ("Start delay (publish -> task starts), ms", lambda r: r.delays),
        ("Completion (publish -> task ends: start delay + run time Celery logs), ms",
         lambda r: r.completions),
    ):  # fmt: skip
        print()
        print(title)
        header = (
            f"{'scenario':<34} | {'n':>3} | {'p50':>8} | {'p95':>8} | {'p99':>8} | {'p95/alone':>9}"
        )
        print(header)
        print("-" * len(header))
        baseline = percentile(pick(alone), 0.95)
        for r in results:
            print(_row(r.scenario.name, pick(r), baseline, ""))
    print()
    print("Context per scenario (during the quiet tenant's publishing)")
    header = (
        f"{'scenario':<34} | {'ahead p50':>9} | {'p95':>5} | {'max':>5} | "
        f"{'backlog before':>14} | {'after':>5} | {'noisy/s':>7} | {'other CPU %':>11}"
    )
    print(header)
    print("-" * len(header))
    for r in results:
        print(
            f"{r.scenario.name:<34} | {percentile(r.ahead, 0.5):>9.0f} | "
            f"{percentile(r.ahead, 0.95):>5.0f} | {max(r.ahead, default=0):>5} | "
            f"{r.backlog_before:>14} | {r.backlog_after:>5} | {r.noisy_per_second:>7.0f} | "
            f"{r.usage.other_pct:>11.0f}"
        )
    print()
    print(
        "ahead: tasks that started between a quiet task's publish and its start (how many "
        "task slots it was held up by)."
    )
    print(
        "backlog: noisy tasks still queued when the quiet tenant began and finished "
        "publishing; noisy/s: noisy tasks started per second meanwhile."
    )
    print(
        "other CPU %: busy time of everything on the machine but the worker, Redis and this "
        "process, in % of one core (two cores in all): high means a noisy measurement."
    )
    fair_noise = next(r for r in results if r.scenario.design == "fair" and r.scenario.noise)
    # The target is on the job's latency (publish -> end), as the issue words it. The start
    # delay alone cannot stay within 2x: under noise a quiet task waits for a running noisy
    # task to end (up to --work-ms), which is more than its whole start delay alone.
    ratio = percentile(fair_noise.completions, 0.95) / percentile(alone.completions, 0.95)
    start_ratio = percentile(fair_noise.delays, 0.95) / percentile(alone.delays, 0.95)
    met = ratio <= TARGET_RATIO
    print(
        f"Target: fair, quiet p95 job latency (completion) under noise <= "
        f"{TARGET_RATIO:.0f}x alone: {ratio:.2f}x -> {'met' if met else 'NOT met'} "
        f"(start delay alone: {start_ratio:.2f}x)"
    )
    return met


def main() -> None:
    install_signal_handlers()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backlog", type=int, default=5000, help="noisy tasks queued first")
    parser.add_argument("--quiet", type=int, default=100, help="quiet tasks")
    parser.add_argument("--interval-ms", type=int, default=20, help="between quiet tasks")
    parser.add_argument("--work-ms", type=int, default=5, help="each task's sleep")
    args = parser.parse_args()
    began = time.monotonic()
    results = []
    try:
        with bench_env("fairness") as bench:
            for scenario in SCENARIOS:
                results.append(run(bench, scenario, args))
    except BenchError as exc:
        print(f"bench failed: {exc}", file=sys.stderr)
        sys.exit(2)
    note(f"done in {time.monotonic() - began:.0f} s")
    sys.exit(0 if print_tables(results, args) else 1)


if __name__ == "__main__":
    main()
