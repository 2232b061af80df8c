"""What a worker liveness probe costs: the chart's ``celeriac-alive`` (the age of the
heartbeat file the worker touches, plain sh) against ``celery inspect ping`` of the pod's own
node (Airflow's chart), measured on one real orchestration worker in the same run.

    .venv/bin/python -m bench.probes [--runs 20] [--redis redis://127.0.0.1:6379] [--db 5]

Exits 0 when celeriac-alive is faster at the median and answers healthy every time."""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

from bench.kit.cli import BenchError, run_main
from bench.kit.env import flush_redis, scratch_dir
from bench.kit.procs import REPO
from bench.kit.report import percentile, summary

ALIVE = REPO / "docker" / "celeriac-alive"


def _timed(argv: list[str], env: dict[str, str], runs: int) -> tuple[list[float], int]:
    """Wall times (ms) of ``runs`` runs of ``argv``, and how many exited 0."""
    times, healthy = [], 0
    for _ in range(runs):
        started = time.perf_counter()
        done = subprocess.run(argv, env=env, capture_output=True, timeout=120, check=False)
        times.append((time.perf_counter() - started) * 1000)
        healthy += done.returncode == 0
    return times, healthy


def run(args: argparse.Namespace) -> bool:
    var_dir = scratch_dir("probes-")
    broker = f"{args.redis}/{args.db}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CELERIAC_")}
    env |= {
        "CELERIAC_VAR_DIR": str(var_dir),
        "CELERIAC_BROKER_URL": broker,
        "CELERIAC_REDIS_URL": broker,
        "CELERIAC_LOG__LEVEL": "WARNING",
    }
    flush_redis(args.redis, [args.db])
    log = (var_dir / "worker.log").open("wb")
    worker = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celeriac.platform.cli",
            "worker",
            "--pool",
            "orchestration",
            "--concurrency",
            "4",
        ],
        env=env,
        cwd=REPO,
        stdout=log,
        stderr=log,
        start_new_session=True,
    )
    heartbeat = var_dir / "heartbeat" / "orchestration"
    try:
        deadline = time.monotonic() + 120
        while not heartbeat.exists():
            if worker.poll() is not None or time.monotonic() > deadline:
                raise BenchError(
                    f"the worker did not start: {(var_dir / 'worker.log').read_text()}"
                )
            time.sleep(0.2)
        node = f"orchestration@{socket.gethostname()}"
        load = os.getloadavg()[0]
        alive, alive_ok = _timed([str(ALIVE), str(heartbeat), "60"], env, args.runs)
        ping, ping_ok = _timed(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "celeriac.workers.celery_app",
                "inspect",
                "ping",
                "-d",
                node,
                "--timeout",
                "5",
            ],
            env,
            args.runs,
        )
        load = max(load, os.getloadavg()[0])
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        worker.wait(timeout=60)
        flush_redis(args.redis, [args.db])
        shutil.rmtree(var_dir, ignore_errors=True)
    print(
        f"\nliveness probe of one orchestration worker, {args.runs} runs each, "
        f"load average up to {load:.1f} on {os.cpu_count()} cores\n"
    )
    print(f"{'probe':<40}{'median ms':>11}{'p95 ms':>10}{'healthy':>9}")
    rows = [
        ("celeriac-alive (heartbeat file age)", alive, alive_ok),
        ("celery inspect ping -d <node> (baseline)", ping, ping_ok),
    ]
    for name, times, ok in rows:
        print(
            f"{name:<40}{percentile(times, 0.5):>11.1f}{percentile(times, 0.95):>10.1f}"
            f"{ok:>5}/{args.runs}"
        )
    ratio = percentile(ping, 0.5) / percentile(alive, 0.5)
    print(f"\nping / celeriac-alive at the median: {ratio:.0f}x")
    summary(
        "probes",
        "celeriac-alive median",
        percentile(alive, 0.5),
        "ms",
        baseline=f"celery inspect ping {percentile(ping, 0.5):.0f} ms",
        ratio=1 / ratio,
        target="faster than the ping, healthy every run",
        met=alive_ok == args.runs and ratio > 1,
    )
    return alive_ok == args.runs and ratio > 1


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--redis", default="redis://127.0.0.1:6379")
    parser.add_argument("--db", type=int, default=5, help="a Redis db of this bench's own")
    return parser.parse_args()


if __name__ == "__main__":
    run_main(
        "probes",
        parse_args,
        run,
        (BenchError, OSError, subprocess.SubprocessError),
        "the worker was stopped",
    )
