"""Quiet tenants' latency beside noisy tenants' backlogs, four scenarios, each measured with
the quiet tenants alone, under fair dispatch (hierarchical: tenants by weight, then the
tenant's band) and under the band-first design it replaced, in the same run.

Run from the repository root (needs Redis on 127.0.0.1:6379; uses dbs 4 and 5)::

    flock /tmp/celeriac-bench.lock .venv/bin/python -m bench.fairness [--cases a,b,c,d]
        [--backlog 3000] [--quiet 120] [--interval-ms 40] [--work-ms 10] [--many 1000]

Scenarios (issue 13, point 7):

- (a) same band: one noisy tenant with a ``normal`` backlog; one quiet tenant sends
  ``normal`` (what the bench measured before issue 13).
- (b) a noisy tenant floods ``high``; ten quiet tenants send ``normal`` and ``low``, one
  task each in turn.
- (c) weights: three noisy tenants of plans free, pro and enterprise (weights 1, 2, 4), each
  with a ``normal`` backlog, and a quiet tenant of each plan sending ``normal``. Besides the
  quiet latency, the noisy tenants' shares of the tasks started while the quiet tenants
  publish, against their weights.
- (d) ``--many`` (1,000) quiet tenants, one ``normal`` task each, while a noisy tenant
  floods ``high``.

Runs per scenario, each with one fresh compute worker (prefork, two processes, ``-O fair``,
prefetch 1: what ``celeriac worker --pool compute`` runs):

- alone: the quiet tenants' tasks only (fair dispatch);
- fair: the noisy backlogs are queued first, the worker starts, and once it has run 50
  tasks the quiet tenants publish, one task every ``--interval-ms``, while the backlogs are
  still there;
- band-first: the same, with the release script of before issue 13 (``bench/band_first.py``,
  kept for this comparison only) in the bench and in the worker.

Every task is ``celeriac.compute.noop`` sleeping ``--work-ms``, so a task slot has a known
length and the quiet load (1000 / ``--interval-ms`` tasks/s, half that in (c)) stays well
under what the worker finishes per second (printed as "capacity", measured in the fair run
of each scenario): the quiet tenants alone are not a queue. Each table is followed by each
quiet tenant's rate against its weighted share of that capacity: a tenant sending more
than its share queues behind its own work under fair share, by design, and is not quiet.
Targets: every quiet group's p95 job latency (publish -> task end) within 2x of alone in
every scenario, under fair dispatch; in (c) the noisy tenants' shares within 10% of their
weights' (relative).
"""

from __future__ import annotations

import argparse
import bisect
import os
import sys
import time
from collections import Counter
from dataclasses import dataclass, field

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
from celeriac.platform.dispatch import get_dispatcher

TARGET_RATIO = 2.0
SHARE_TOLERANCE = 0.10
WARM_STARTS = 50
FAIR = "fair"
ALONE = "alone"
DESIGNS = (ALONE, FAIR, BAND_FIRST)


@dataclass(frozen=True)
class Noisy:
    tenant: str
    band: str
    weight: int
    backlog: int


@dataclass(frozen=True)
class QuietTask:
    tenant: str
    band: str
    group: str  # the row it is reported in


@dataclass
class Case:
    key: str
    title: str
    noisy: list[Noisy]
    quiet: list[QuietTask]
    weights: dict[str, int] = field(default_factory=dict)
    # The quiet tasks go out every interval_ms x this: in (c) a free quiet tenant's weighted
    # share is a seventh of the slots or less, and a tenant sending more than its share is
    # not quiet (it queues behind its own work, by design).
    interval_factor: int = 1


def cases(args: argparse.Namespace) -> dict[str, Case]:
    n, backlog = args.quiet, args.backlog
    # (d) publishes for --many x interval: its backlog must outlast that at full speed.
    long_backlog = backlog + int(args.many * args.interval_ms / 1000 * 2000 / args.work_ms)
    plans = {"free": 1, "pro": 2, "enterprise": 4}
    return {
        "a": Case(
            "a",
            "(a) same band: noisy normal backlog, quiet normal",
            [Noisy("noisy", "normal", 1, backlog)],
            [QuietTask("quiet", "normal", "quiet normal") for _ in range(n)],
        ),
        "b": Case(
            "b",
            "(b) noisy floods high; 10 quiet tenants send normal and low",
            [Noisy("noisy", "high", 1, backlog)],
            [
                QuietTask(f"quiet-{i % 10}", band, f"quiet {band}")
                for i in range(n)
                for band in [("normal", "low")[(i // 10) % 2]]
            ],
        ),
        "c": Case(
            "c",
            "(c) noisy free, pro, enterprise (1, 2, 4); a quiet tenant per plan",
            [Noisy(f"noisy-{plan}", "normal", w, backlog) for plan, w in plans.items()],
            [
                QuietTask(f"quiet-{plan}", "normal", f"quiet {plan}")
                for i in range(n)
                for plan in [list(plans)[i % len(plans)]]
            ],
            {
                **{f"noisy-{p}": w for p, w in plans.items()},
                **{f"quiet-{p}": w for p, w in plans.items()},
            },
            interval_factor=2,
        ),
        "d": Case(
            "d",
            f"(d) {args.many:,} quiet tenants (normal) while noisy floods high",
            [Noisy("noisy", "high", 1, long_backlog)],
            [
                QuietTask(f"q{i:04d}", "normal", f"{args.many:,} quiet tenants")
                for i in range(args.many)
            ],
        ),
    }


@dataclass
class Result:
    case: Case
    design: str
    completions: dict[str, list[float]]  # group -> ms
    delays: dict[str, list[float]]
    ahead: dict[str, list[int]]
    noisy_shares: dict[str, int]  # noisy tenant -> tasks started while the quiet published
    capacity: float  # tasks started per second while the quiet tenants published
    quiet_rate: dict[str, float]  # group -> tasks/s sent per tenant of the group
    backlog_after: int
    usage: Usage
    load: float


def run(bench: BenchEnv, case: Case, design: str, args: argparse.Namespace) -> Result:
    bench.flush()
    use_design(FAIR if design == ALONE else design)

    dispatcher = get_dispatcher()
    assert dispatcher is not None
    for tenant, weight in case.weights.items():
        dispatcher.set_weight(tenant, weight)
    publisher = Publisher()
    noisy = case.noisy if design != ALONE else []

    wait_for_quiet_machine(10.0, 40.0)
    note(f"{case.title} / {design} ...")
    # The noisy backlogs, interleaved (so that no tenant starts with a head start).
    for i in range(max((x.backlog for x in noisy), default=0)):
        for x in noisy:
            if i < x.backlog:
                publisher.fair(x.tenant, f"{x.tenant}#{i}", args.work_ms, x.band)
    app = BAND_FIRST_APP if design == BAND_FIRST else WORKER_APP
    worker = bench.start_worker(f"{case.key}-{design}", [POOL_QUEUE], app)
    log = WorkerLog(worker.log_path)
    if not noisy:
        for i in range(4):
            publisher.fair("warm", f"warm-{i}", args.work_ms)
    if not wait_for(
        lambda: len(log.starts) >= (WARM_STARTS if noisy else 4),
        STARTUP_TIMEOUT_SECONDS,
        "the worker to start",
        worker,
        log,
    ):
        raise BenchError(f"worker {worker.name} ran no task:\n{worker.log_tail()}")
    time.sleep(0.2)

    before = WorkerReading.take(worker, bench.broker)
    started_before = len(log.starts)
    interval = args.interval_ms * case.interval_factor / 1000
    labels = []
    began = time.perf_counter()
    began_wall = time.time()
    for i, task in enumerate(case.quiet):
        pause = began + i * interval - time.perf_counter()
        if pause > 0:
            time.sleep(pause)
        label = f"quiet-{i}"
        labels.append(label)
        publisher.fair(task.tenant, label, args.work_ms, task.band)
    ended_wall = time.time()
    quiet_rate = _quiet_rate(case, ended_wall - began_wall)
    after = WorkerReading.take(worker, bench.broker)
    log.poll()
    capacity = (len(log.starts) - started_before) / (ended_wall - began_wall)
    backlog_after = sum(int(bench.broker.llen(f"{POOL_QUEUE}.{x.band}.{x.tenant}")) for x in noisy)
    total_backlog = sum(x.backlog for x in noisy)
    wait_for(
        lambda: all(
            label in log.starts and log.starts[label].task_id in log.runtimes for label in labels
        ),
        total_backlog * (args.work_ms + 10) / 1000 + 90,
        "the quiet tasks to run",
        worker,
        log,
    )
    if log.problems:
        note(f"  worker warnings: {len(log.problems)}, first: {log.problems[0]}")
    bench.stop_workers()

    completions, delays, ahead = _quiet_latencies(case, labels, publisher, log)
    shares = _noisy_shares(publisher, log, began_wall, ended_wall)
    return Result(
        case,
        design,
        completions,
        delays,
        ahead,
        shares,
        capacity,
        quiet_rate,
        backlog_after,
        Usage.between(before, after),
        os.getloadavg()[0],
    )


def _quiet_rate(case: Case, seconds: float) -> dict[str, float]:
    """Tasks/s sent per tenant of each quiet group over ``seconds`` of publishing."""
    group_tenants: dict[str, set[str]] = {}
    group_sent: Counter[str] = Counter()
    for task in case.quiet:
        group_tenants.setdefault(task.group, set()).add(task.tenant)
        group_sent[task.group] += 1
    return {g: group_sent[g] / len(t) / seconds for g, t in group_tenants.items()}


def _quiet_latencies(
    case: Case, labels: list[str], publisher: Publisher, log: WorkerLog
) -> tuple[dict[str, list[float]], dict[str, list[float]], dict[str, list[int]]]:
    """Per quiet group: completions (publish -> end, ms), start delays (ms) and the tasks
    started ahead of each quiet task; notes the quiet tasks that did not finish."""
    starts = sorted(publisher.started_at(log, label) for label in log.starts)
    completions: dict[str, list[float]] = {}
    delays: dict[str, list[float]] = {}
    ahead: dict[str, list[int]] = {}
    missing = 0
    for label, task in zip(labels, case.quiet, strict=True):
        start = log.starts.get(label)
        if start is None or start.task_id not in log.runtimes:
            missing += 1
            continue
        completions.setdefault(task.group, []).append(
            start.delay_ms + 1000 * log.runtimes[start.task_id]
        )
        delays.setdefault(task.group, []).append(start.delay_ms)
        sent, started = publisher.sent_at[label], publisher.started_at(log, label)
        ahead.setdefault(task.group, []).append(
            bisect.bisect_left(starts, started) - bisect.bisect_right(starts, sent)
        )
    if missing:
        note(f"  {missing} of {len(labels)} quiet tasks did not finish in time")
    return completions, delays, ahead


def _noisy_shares(
    publisher: Publisher, log: WorkerLog, began_wall: float, ended_wall: float
) -> dict[str, int]:
    """Noisy tasks started per noisy tenant while the quiet tenants published."""
    shares: Counter[str] = Counter()
    for label in log.starts:
        if "#" in label and began_wall <= publisher.started_at(log, label) <= ended_wall:
            shares[label.split("#")[0]] += 1
    return dict(shares)


def print_case(results: list[Result]) -> bool:
    """One scenario's table; returns whether its targets are met."""
    case = results[0].case
    by_design = {r.design: r for r in results}
    alone, fair = by_design.get(ALONE), by_design.get(FAIR)
    print()
    print(case.title)
    met = _print_latencies(results, alone)
    if fair is not None:
        _print_quiet_rates(case, fair)
    if fair is not None and alone is not None:
        _print_latency_targets(case, fair, alone)
    met &= _print_noisy_shares(case, results, fair)
    return met


def _print_latencies(results: list[Result], alone: Result | None) -> bool:
    """The latency table of every design; whether the fair design's ratios are met."""
    met = True
    header = (
        f"{'design':<10} | {'quiet group':<20} | {'n':>4} | {'p50 ms':>8} | {'p95 ms':>8} | "
        f"{'p99 ms':>8} | {'p95/alone':>9} | {'start p95':>9} | {'ahead p95':>9} | "
        f"{'capacity/s':>10} | {'noisy left':>10} | {'other CPU %':>11} | {'load1':>5}"
    )
    print(header)
    print("-" * len(header))
    for r in results:
        for group, values in r.completions.items():
            base = alone.completions.get(group, []) if alone else []
            ratio = percentile(values, 0.95) / percentile(base, 0.95) if base else float("nan")
            print(
                f"{r.design:<10} | {group:<20} | {len(values):>4} | "
                f"{percentile(values, 0.5):>8.1f} | {percentile(values, 0.95):>8.1f} | "
                f"{percentile(values, 0.99):>8.1f} | {ratio:>8.2f}x | "
                f"{percentile(r.delays[group], 0.95):>9.1f} | "
                f"{percentile(r.ahead[group], 0.95):>9.0f} | {r.capacity:>10.0f} | "
                f"{r.backlog_after:>10} | {r.usage.other_pct:>11.0f} | {r.load:>5.1f}"
            )
            if r.design == FAIR:
                ok = ratio <= TARGET_RATIO
                met &= ok
    return met


def _print_quiet_rates(case: Case, fair: Result) -> None:
    """Each quiet group's sending rate against its weighted share."""
    # The precondition of the target: each quiet tenant sends less than its weighted
    # share of the slots (capacity x its weight / (noisy weights + its weight)).
    noisy_weight = sum(x.weight for x in case.noisy)
    tenant_of = {task.group: task.tenant for task in case.quiet}
    for group, rate in fair.quiet_rate.items():
        weight = case.weights.get(tenant_of[group], 1)
        share = fair.capacity * weight / (noisy_weight + weight)
        print(
            f"  {group}: {rate:.1f} tasks/s per tenant against a weighted share of "
            f"{share:.1f}/s at the fair run's capacity ({rate / share:.0%})"
        )


def _print_latency_targets(case: Case, fair: Result, alone: Result) -> None:
    """Each quiet group's fair p95 against the target ratio to alone, also as a summary row."""
    for group, values in fair.completions.items():
        ratio = percentile(values, 0.95) / percentile(alone.completions[group], 0.95)
        print(
            f"Target {case.key}: {group}, fair p95 <= {TARGET_RATIO:.0f}x alone: "
            f"{ratio:.2f}x -> {'met' if ratio <= TARGET_RATIO else 'NOT met'}"
        )
        summary(
            "fairness",
            f"({case.key}) {group}: quiet p95, fair",
            percentile(values, 0.95),
            "ms",
            baseline="the quiet tenants alone",
            ratio=ratio,
            target=f"<= {TARGET_RATIO:.0f}x",
            met=ratio <= TARGET_RATIO,
        )


def _print_noisy_shares(case: Case, results: list[Result], fair: Result | None) -> bool:
    """The noisy tenants' shares of the slots against their weights; whether the fair
    design's are within the tolerance. Nothing with fewer than two noisy tenants."""
    met = True
    noisy_weights = {x.tenant: x.weight for x in case.noisy}
    if len(noisy_weights) <= 1:
        return met
    print()
    print(f"{case.key}: noisy tenants' tasks started while the quiet tenants published")
    header = (
        f"{'design':<10} | {'tenant':<18} | {'weight':>6} | {'tasks':>6} | "
        f"{'share':>6} | {'weight share':>12} | {'share/weight':>12}"
    )
    print(header)
    print("-" * len(header))
    total_weight = sum(noisy_weights.values())
    for r in results:
        if r.design == ALONE:
            continue
        total = sum(r.noisy_shares.values()) or 1
        for tenant, weight in noisy_weights.items():
            share = r.noisy_shares.get(tenant, 0) / total
            expected = weight / total_weight
            print(
                f"{r.design:<10} | {tenant:<18} | {weight:>6} | "
                f"{r.noisy_shares.get(tenant, 0):>6} | {share:>6.3f} | "
                f"{expected:>12.3f} | {share / expected:>12.2f}"
            )
            if r.design == FAIR and abs(share / expected - 1) > SHARE_TOLERANCE:
                met = False
    if fair is not None:
        total = sum(fair.noisy_shares.values()) or 1
        worst = max(
            abs(fair.noisy_shares.get(t, 0) / total / (w / total_weight) - 1)
            for t, w in noisy_weights.items()
        )
        print(
            f"Target {case.key}: fair shares within {SHARE_TOLERANCE:.0%} of the weights': "
            f"worst {worst:.1%} off -> "
            f"{'met' if worst <= SHARE_TOLERANCE else 'NOT met'}"
        )
    return met


def main() -> None:
    install_signal_handlers()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", default="a,b,c,d", help="comma-separated, of a, b, c, d")
    parser.add_argument("--designs", default=",".join(DESIGNS))
    parser.add_argument("--backlog", type=int, default=3000, help="per noisy tenant")
    parser.add_argument("--quiet", type=int, default=120, help="quiet tasks in (a)-(c)")
    parser.add_argument("--many", type=int, default=1000, help="quiet tenants in (d)")
    parser.add_argument(
        "--interval-ms", type=int, default=40, help="between quiet tasks ((c): twice this)"
    )
    parser.add_argument("--work-ms", type=int, default=10, help="each task's sleep")
    args = parser.parse_args()
    chosen = cases(args)
    keys = args.cases.split(",")
    designs = args.designs.split(",")
    began = time.monotonic()
    results: dict[str, list[Result]] = {}
    try:
        with bench_env("fairness") as bench:
            for key in keys:
                results[key] = [run(bench, chosen[key], d, args) for d in designs]
    except BenchError as exc:
        print(f"bench failed: {exc}", file=sys.stderr)
        sys.exit(2)
    note(f"done in {time.monotonic() - began:.0f} s")
    print()
    print(
        f"One compute worker (prefork -c2, -O fair, prefetch 1); every task is "
        f"celeriac.compute.noop sleeping {args.work_ms} ms; quiet tasks one every "
        f"{args.interval_ms} ms ({1000 / args.interval_ms:.0f}/s; (c) half that); noisy "
        f"backlogs of {args.backlog} per tenant ((d): enough to outlast its publishing)."
    )
    print(
        "Latency = publish -> task end (start delay + run time Celery logs); start p95: "
        "publish -> start; ahead: tasks started between a quiet task's publish and its start;"
    )
    print(
        "capacity/s: tasks started per second while the quiet tenants published; noisy "
        "left: noisy tasks still queued when they finished; other CPU %: busy time of "
        "everything but the worker, Redis and this process (of one core; two in all)."
    )
    met = all([print_case(results[key]) for key in keys])  # every table printed
    sys.exit(0 if met else 1)


if __name__ == "__main__":
    main()
