"""The SDK's overhead and the cost of open job event streams, in one run.

Run from the repository root (PostgreSQL and Redis on 127.0.0.1)::

    flock /tmp/celeriac-bench.lock .venv/bin/python -m bench.sdk [--submissions 300]
        [--rounds 3] [--streams 200] [--ingest-seconds 8] [--concurrency 16]

1. **SDK overhead** (issue 17, point 13): ``client.jobs.submit(records=..., pipeline=...)``
   in a loop against the API, and raw ``httpx.Client.post`` of the same body with an
   ``Idempotency-Key`` (what the SDK sends), alternating rounds; target: the SDK within 10%.
2. **Event streams vs ingest** (point 12): 200 concurrent SSE clients on one API process,
   each watching its own job; ``POST /v1/jobs`` throughput (``bench/loadgen.py``) measured
   without streams, with the 200 streams open (twice), then without again once they have
   ended (ABBA order, so drift over the run cancels out); target: within 10%. Then the
   worker pools start, every watched job runs to its end, and each client's events are
   compared with the job's whole stream read afresh: every client must have received
   every event, in order. The ingest runs' own jobs are cancelled in the database before
   the workers start (only their acceptance is measured).

It builds its environment with ``bench/kit/env.py`` (database, Redis dbs 2 and 3, a var
directory, tenant ``bench`` with quotas that refuse nothing) and removes it at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

from bench.kit.cli import BenchError, install_signal_handlers, note, run_main
from bench.kit.env import Env, environment
from bench.kit.procs import REPO
from bench.kit.report import percentile, summary
from celeriac.client import Client
from celeriac.client._core import SSEDecoder
from celeriac.platform.db import get_sessionmaker
from celeriac.platform.jobs.pipelines import ANALYZER, DATASET, PluginInfo, register_plugins

SPEC = {"datasets": [{"name": "tabular"}], "analyzers": [{"name": "summary"}]}


def _records(count: int) -> list[dict[str, Any]]:
    return [{"id": i, "amount": i * 1.25, "label": f"r{i % 7}"} for i in range(count)]


def _register_plugins() -> None:
    """What a compute worker writes at start, so that submissions validate before any
    worker runs (the workers write the real rows when they start)."""
    with get_sessionmaker().begin() as session:
        register_plugins(
            session,
            [
                PluginInfo(DATASET, "tabular", "bench", {"type": "object"}, produces="table"),
                PluginInfo(ANALYZER, "summary", "bench", {"type": "object"}, accepts=("table",)),
            ],
        )


def _load() -> str:
    one, five, _ = os.getloadavg()
    return f"load {one:.1f}/{five:.1f} on {os.cpu_count()} cores"


# -- 1. SDK overhead ----------------------------------------------------------------------


def _raw_round(env: Env, body: dict[str, Any], count: int) -> list[float]:
    latencies = []
    with httpx.Client(
        base_url=env.api_url, timeout=30, headers={"Authorization": f"Bearer {env.api_key}"}
    ) as http:
        for _ in range(count):
            started = time.perf_counter()
            answer = http.post(
                "/v1/jobs", json=body, headers={"Idempotency-Key": f"raw-{uuid.uuid4()}"}
            )
            answer.json()
            latencies.append((time.perf_counter() - started) * 1000)
            if answer.status_code != 202:
                raise BenchError(f"raw POST answered {answer.status_code}: {answer.text[:300]}")
    return latencies


def _sdk_round(env: Env, records: list[dict[str, Any]], count: int) -> list[float]:
    latencies = []
    with Client(base_url=env.api_url, api_key=env.api_key) as client:
        for _ in range(count):
            started = time.perf_counter()
            client.jobs.submit(records=records, pipeline=SPEC)
            latencies.append((time.perf_counter() - started) * 1000)
    return latencies


def sdk_overhead(env: Env, args: argparse.Namespace) -> bool:
    records = _records(args.records)
    body = {"pipeline": SPEC, "priority": "normal", "records": records}
    _raw_round(env, body, 50)  # warm-up of both paths (connections, caches)
    _sdk_round(env, records, 50)
    rounds: dict[str, list[list[float]]] = {"raw httpx": [], "SDK": []}
    for index in range(args.rounds):
        order = ("raw httpx", "SDK") if index % 2 == 0 else ("SDK", "raw httpx")
        for name in order:
            run = (
                _raw_round(env, body, args.submissions)
                if name == "raw httpx"
                else _sdk_round(env, records, args.submissions)
            )
            rounds[name].append(run)
    print(
        f"\n## SDK overhead: {args.submissions} sequential submissions x {args.rounds} rounds"
        f" ({args.records} records each), {_load()}"
    )
    print(
        f"{'client':<10} {'median ms':>10} {'p95 ms':>8} {'p99 ms':>8} {'jobs/s':>8}"
        "  per-round medians"
    )
    medians = {}
    for name, runs in rounds.items():
        every = [v for run in runs for v in run]
        medians[name] = statistics.median(every)
        per_round = " ".join(f"{statistics.median(r):.2f}" for r in runs)
        rate = len(every) / (sum(every) / 1000)
        print(
            f"{name:<10} {medians[name]:>10.2f} {percentile(every, 0.95):>8.2f} "
            f"{percentile(every, 0.99):>8.2f} {rate:>8.0f}  {per_round}"
        )
    ratio = medians["SDK"] / medians["raw httpx"]
    ok = ratio <= 1.10
    summary(
        "sdk",
        "SDK submit median latency",
        medians["SDK"],
        "ms",
        baseline=f"raw httpx {medians['raw httpx']:.1f} ms",
        ratio=ratio,
        target="<= 1.10x",
        met=ok,
    )
    print(f"SDK / raw median latency: {ratio:.3f} (target <= 1.10): {'met' if ok else 'NOT met'}")
    return ok


# -- 2. Event streams vs ingest ----------------------------------------------------------


class Streams:
    """``count`` SSE clients on one asyncio loop of their own (a thread), one connection
    each, recording the event ids they receive."""

    def __init__(self, env: Env, job_ids: list[str]) -> None:
        self.env = env
        self.job_ids = job_ids
        self.received: dict[str, list[str]] = {j: [] for j in job_ids}
        self.errors: list[str] = []
        self.ended = 0
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.done = asyncio.run_coroutine_threadsafe(self._all(), self.loop)

    async def _all(self) -> None:
        limits = httpx.Limits(max_connections=len(self.job_ids) + 10)
        headers = {"Authorization": f"Bearer {self.env.api_key}"}
        async with httpx.AsyncClient(
            base_url=self.env.api_url,
            limits=limits,
            headers=headers,
            timeout=httpx.Timeout(30, read=None),
        ) as http:
            await asyncio.gather(*(self._one(http, j) for j in self.job_ids))

    async def _one(self, http: httpx.AsyncClient, job_id: str) -> None:
        decoder = SSEDecoder()
        try:
            async with http.stream("GET", f"/v1/jobs/{job_id}/events") as response:
                async for line in response.aiter_lines():
                    event = decoder.feed(line)
                    if event is not None and event.data:
                        self.received[job_id].append(json.loads(event.data)["id"])
        except Exception as exc:
            self.errors.append(f"{job_id}: {exc!r}")
        self.ended += 1

    def opened(self) -> int:
        return sum(1 for ids in self.received.values() if ids)

    def wait(self, timeout: float) -> None:
        self.done.result(timeout)
        self.loop.call_soon_threadsafe(self.loop.stop)


def _ingest(env: Env, args: argparse.Namespace, log: Path) -> dict[str, Any]:
    argv = [
        sys.executable,
        "-m",
        "bench.loadgen",
        "--url",
        f"{env.api_url}/v1/jobs",
        "--key",
        env.api_key,
        "--seconds",
        str(args.ingest_seconds),
        "--requests",
        "1000000",
        "--warmup",
        "200",
        "--concurrency",
        str(args.concurrency),
    ]
    with open(log, "ab") as err:
        done = subprocess.run(
            argv,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            cwd=REPO,
            timeout=4 * args.ingest_seconds + 120,
            check=False,
        )
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    result = lines[-1] if lines else None
    if done.returncode != 0 or result is None or "accepted_per_second" not in result:
        raise BenchError(f"the load generator failed ({done.returncode}); see {log}")
    result["load"] = _load()
    return dict(result)


def streams_vs_ingest(env: Env, args: argparse.Namespace) -> bool:
    log = env.root / "loadgen.log"
    with Client(base_url=env.api_url, api_key=env.api_key) as client:
        watched = [
            str(client.jobs.submit(records=_records(20), pipeline=SPEC, priority="high").id)
            for _ in range(args.streams)
        ]
    runs: list[tuple[str, dict[str, Any]]] = [("without", _ingest(env, args, log))]
    streams = Streams(env, watched)
    deadline = time.monotonic() + 120
    while streams.opened() < len(watched):
        if time.monotonic() > deadline or streams.errors:
            raise BenchError(
                f"{streams.opened()} of {len(watched)} streams opened; {streams.errors[:3]}"
            )
        time.sleep(0.1)
    note(f"{len(watched)} event streams open")
    runs.append(("with", _ingest(env, args, log)))
    runs.append(("with", _ingest(env, args, log)))
    # Only the watched jobs run: the ingest runs' jobs are cancelled where they stand.
    with env.db() as conn:
        conn.execute(
            "UPDATE jobs SET state = 'cancelled', finished_at = now() "
            "WHERE state = 'queued' AND NOT (id = ANY(%s::uuid[]))",
            (watched,),
        )
    started = time.monotonic()
    workers = env.start_workers()
    streams.wait(timeout=900)
    ran_seconds = time.monotonic() - started
    for process in workers.values():
        env.stop(process)
    runs.append(("without", _ingest(env, args, log)))

    complete = 0
    problems: list[str] = []
    with Client(base_url=env.api_url, api_key=env.api_key) as client:
        for job_id in watched:
            expected = [e.id for e in client.jobs.events(job_id, timeout=60)]
            got = streams.received[job_id]
            if got == expected and expected[-1].startswith("2."):
                complete += 1
            elif len(problems) < 3:
                problems.append(f"{job_id}: got {got}, expected {expected}")
    print(
        f"\n## Ingest with {len(watched)} open event streams on one API process "
        f"(loadgen, {args.concurrency} in flight, {args.ingest_seconds:.0f} s per run)"
    )
    print(
        f"{'run':<4} {'streams':<8} {'jobs/s':>8} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8}"
        f" {'errors':>7}  machine"
    )
    for index, (kind, run) in enumerate(runs, 1):
        print(
            f"{index:<4} {kind:<8} {run['accepted_per_second']:>8.0f} {run['p50_ms']:>8.1f} "
            f"{run['p95_ms']:>8.1f} {run['p99_ms']:>8.1f} {run['errors']:>7}  {run['load']}"
        )
    without = statistics.mean(r["accepted_per_second"] for k, r in runs if k == "without")
    with_streams = statistics.mean(r["accepted_per_second"] for k, r in runs if k == "with")
    ratio = with_streams / without
    summary(
        "sdk",
        f"ingest with {args.streams} event streams open",
        with_streams,
        "jobs/s",
        baseline=f"no streams {without:.0f} jobs/s",
        ratio=ratio,
        target=">= 0.90x",
        met=ratio >= 0.90,
    )
    print(
        f"with / without streams: {ratio:.3f} (target >= 0.90): "
        f"{'met' if ratio >= 0.90 else 'NOT met'}"
    )
    print(
        f"watched jobs ran to their end in {ran_seconds:.1f} s; clients with every event in "
        f"order: {complete} of {len(watched)}; stream errors: {len(streams.errors)}"
    )
    for problem in problems + streams.errors[:3]:
        print(f"  {problem}")
    return ratio >= 0.90 and complete == len(watched) and not streams.errors


def _parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--submissions", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--records", type=int, default=10)
    parser.add_argument("--streams", type=int, default=200)
    parser.add_argument("--ingest-seconds", type=float, default=8.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--only", choices=["sdk", "streams"], default=None)
    return parser.parse_args()


def run(args: argparse.Namespace) -> bool:
    install_signal_handlers()
    with environment("sdk", "celeriac_bench_sdk") as env:
        _register_plugins()
        env.start_api()
        ok = True
        if args.only in (None, "sdk"):
            ok = sdk_overhead(env, args) and ok
        if args.only in (None, "streams"):
            ok = streams_vs_ingest(env, args) and ok
        return ok


if __name__ == "__main__":
    run_main("sdk", _parse_args, run, (BenchError,), "the environment was removed")
