"""Console pages' server time next to the JSON API's for the same data, and the weight of a
cold first load of the jobs page.

Run from the repository root (needs PostgreSQL and Redis on 127.0.0.1, as the tests do)::

    flock /tmp/celeriac-bench.lock .venv/bin/python -m bench.console \\
        [--jobs 100000] [--tasks 1000] [--requests 200] [--redis redis://127.0.0.1:6379]

Set-up: a fresh database ``celeriac_bench_console``, one tenant (quotas too high to refuse
anything) with ``--jobs`` jobs inserted by ``INSERT ... SELECT generate_series`` and one
finished job with ``--tasks`` tasks (every task with start, end and duration, 1,000 anomaly
points in its result document, its payload's first chunk stored), one API process under
uvicorn. The client signs in to the console with the tenant's key (a session cookie) and
sends, interleaved, ``--requests`` requests of each pair over one keep-alive connection:

- ``GET /console/jobs`` (25 jobs, the table) vs ``GET /v1/jobs?limit=25``;
- ``GET /console/jobs/{id}`` (1,000 timeline bars and the results drawn) vs
  ``GET /v1/jobs/{id}`` and vs ``GET /v1/jobs/{id}`` + ``/results`` (what a client of the
  JSON API reads to show the same page);
- ``GET /console/jobs/{id}/live`` of a running job with ``--tasks`` tasks (what the page
  re-reads on each event; read and drawn anew each time, only the text of rows that ended
  or have not started is memoised, as between real re-reads) vs ``GET /v1/jobs/{id}``.

Times are loopback round trips measured by the client (the same transport on both sides of
each ratio). Target: the console's p50 and p95 within 1.5x of its JSON baseline; the first
load (HTML and every asset it references, no cache) under 500 KB.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import psycopg

from bench.kit.cli import BenchError, run_main
from bench.kit.env import (
    PG_SERVER,
    UNLIMITED_QUOTAS,
    celeriac_command,
    drop_database,
    flush_redis,
    recreate_database,
    scratch_dir,
    sqlalchemy_url,
)
from bench.kit.procs import HOST, Process, api_argv, free_port
from bench.kit.report import percentile, summary

DATABASE = "celeriac_bench_console"
TENANT_SLUG = "bench-console"
REDIS_DBS = (4, 5)
TARGET_RATIO = 1.5
TARGET_FIRST_LOAD = 500_000


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--redis", default=f"redis://{HOST}:6379")
    return parser.parse_args()


def _env(var_dir: Path, database_url: str, redis: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CELERIAC_")}
    env.update(
        {
            "CELERIAC_VAR_DIR": str(var_dir),
            "CELERIAC_DATABASE_URL": database_url,
            "CELERIAC_BROKER_URL": f"{redis}/{REDIS_DBS[0]}",
            "CELERIAC_REDIS_URL": f"{redis}/{REDIS_DBS[1]}",
            "CELERIAC_LOG__LEVEL": "WARNING",
        }
    )
    return env


def _celeriac(env: dict[str, str], cwd: Path, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "celeriac.platform.cli", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    if done.returncode != 0:
        raise RuntimeError(f"celeriac {' '.join(args)}: {done.stderr.strip()[-400:]}")
    return done.stdout


def _seed(env: dict[str, str], var_dir: Path, jobs: int, tasks: int) -> tuple[str, str, str]:
    """The tenant's key, the id of its finished job with ``tasks`` tasks and the id of a
    running one with as many (half of them ended)."""
    out = _celeriac(env, var_dir.parent, "admin", "create-tenant", TENANT_SLUG)
    key = re.search(r"api_key=(\S+)", out)
    tenant = re.search(r"tenant_id=(\S+)", out)
    assert key, out
    assert tenant, out
    celeriac_command(env, var_dir.parent, "admin", "set-quotas", TENANT_SLUG, *UNLIMITED_QUOTAS)
    tenant_id = tenant.group(1)
    big_job = str(uuid.uuid4())
    started = datetime.now(UTC) - timedelta(minutes=5)
    pipeline = {
        "name": "full",
        "datasets": [{"name": "tabular"}, {"name": "text"}],
        "analyzers": [{"name": "summary"}, {"name": "anomalies"}],
    }
    with psycopg.connect(f"{PG_SERVER}/{DATABASE}", autocommit=True) as conn:
        conn.execute(
            """
            INSERT INTO jobs (id, tenant_id, priority, pipeline, state, stage, checkpoints,
                payload_key, result_key, record_count, payload_bytes, metadata, error,
                dispatch_count, started_at, finished_at, created_at, updated_at)
            SELECT gen_random_uuid(), %(t)s, (ARRAY['high','normal','low'])[1 + n %% 3],
                %(p)s::jsonb, (ARRAY['succeeded','failed','partial','cancelled'])[1 + n %% 4],
                'finalize', '{}'::jsonb, 'jobs/x/payload/', NULL, 100, 5000, '{}'::jsonb,
                NULL, 1, now() - n * interval '1 second' + interval '1 second',
                now() - n * interval '1 second' + interval '2 second',
                now() - n * interval '1 second', now()
            FROM generate_series(1, %(n)s) AS n
            """,
            {"t": tenant_id, "p": json.dumps(pipeline), "n": jobs},
        )
        conn.execute(
            """
            INSERT INTO jobs (id, tenant_id, priority, pipeline, state, stage, checkpoints,
                payload_key, result_key, record_count, payload_bytes, metadata,
                dispatch_count, started_at, finished_at, created_at, updated_at)
            VALUES (%(j)s, %(t)s, 'high', %(p)s::jsonb, 'succeeded', 'finalize',
                '{"payload": {"chunks": 1}}'::jsonb, %(pk)s, %(rk)s, 2000, 100000,
                '{}'::jsonb, 1, %(s)s, %(s)s + interval '90 second', %(s)s, now())
            """,
            {
                "j": big_job,
                "t": tenant_id,
                "p": json.dumps(pipeline),
                "pk": f"tenants/{tenant_id}/jobs/{big_job}/payload/",
                "rk": f"tenants/{tenant_id}/jobs/{big_job}/result.json",
                "s": started,
            },
        )
        conn.execute(
            """
            INSERT INTO job_tasks (id, tenant_id, job_id, task_key, stage, plugin,
                plugin_version, chunk, input_key, output_key, state, attempts, started_at,
                finished_at, duration_ms, created_at, updated_at)
            SELECT gen_random_uuid(), %(t)s, %(j)s, 'task-' || n,
                CASE WHEN n <= %(n)s / 2 THEN 'datasets' ELSE 'analysis' END,
                CASE WHEN n <= %(n)s / 2 THEN 'tabular' ELSE 'anomalies' END, '1.0', n,
                'in', 'out', CASE WHEN n %% 97 = 0 THEN 'failed' ELSE 'succeeded' END,
                1 + (n %% 50 = 0)::int, %(s)s + n * interval '50 millisecond',
                %(s)s + n * interval '50 millisecond' + interval '400 millisecond', 400,
                %(s)s, now()
            FROM generate_series(1, %(n)s) AS n
            """,
            {"t": tenant_id, "j": big_job, "s": started, "n": tasks},
        )
        running_job = str(uuid.uuid4())
        conn.execute(
            """
            INSERT INTO jobs (id, tenant_id, priority, pipeline, state, stage, checkpoints,
                payload_key, result_key, record_count, payload_bytes, metadata,
                dispatch_count, started_at, created_at, updated_at)
            VALUES (%(j)s, %(t)s, 'high', %(p)s::jsonb, 'running', 'analysis',
                '{"payload": {"chunks": 1}}'::jsonb, %(pk)s, NULL, 2000, 100000,
                '{}'::jsonb, 1, %(s)s, %(s)s, now())
            """,
            {
                "j": running_job,
                "t": tenant_id,
                "p": json.dumps(pipeline),
                "pk": f"tenants/{tenant_id}/jobs/{running_job}/payload/",
                "s": started,
            },
        )
        conn.execute(
            """
            INSERT INTO job_tasks (id, tenant_id, job_id, task_key, stage, plugin,
                plugin_version, chunk, input_key, output_key, state, attempts, started_at,
                finished_at, duration_ms, created_at, updated_at)
            SELECT gen_random_uuid(), %(t)s, %(j)s, 'task-' || n,
                CASE WHEN n <= %(n)s / 2 THEN 'datasets' ELSE 'analysis' END,
                CASE WHEN n <= %(n)s / 2 THEN 'tabular' ELSE 'anomalies' END, '1.0', n,
                'in', 'out', CASE WHEN n <= %(n)s / 2 THEN 'succeeded'
                    WHEN n <= %(n)s * 3 / 4 THEN 'running' ELSE 'pending' END,
                1, CASE WHEN n <= %(n)s * 3 / 4 THEN %(s)s + n * interval '50 millisecond' END,
                CASE WHEN n <= %(n)s / 2
                    THEN %(s)s + n * interval '50 millisecond' + interval '400 millisecond'
                END, CASE WHEN n <= %(n)s / 2 THEN 400 END, %(s)s, now()
            FROM generate_series(1, %(n)s) AS n
            """,
            {"t": tenant_id, "j": running_job, "s": started, "n": tasks},
        )
        conn.execute("ANALYZE")
    _store_blobs(env, tenant_id, big_job)
    return key.group(1), big_job, running_job


def _store_blobs(env: dict[str, str], tenant_id: str, job_id: str) -> None:
    """The big job's result document and first payload chunk, encrypted as the workers
    write them (in a child process with the API's settings)."""
    code = """
import json, sys
from celeriac.platform.tenant_data import tenant_blobs
tenant, job = sys.argv[1], sys.argv[2]
rows = [{"id": i, "amount": 50.0 + (i % 17) * 0.5 + (400 if i % 200 == 0 else 0)}
        for i in range(2000)]
chunk = "\\n".join(json.dumps(r) for r in rows).encode() + b"\\n"
tenant_blobs().put(tenant, f"tenants/{tenant}/jobs/{job}/payload/00000.ndjson", chunk)
anomalies = {"method": "robust_z", "threshold": 3.5, "rows": 2000, "count": 10,
             "columns": {"amount": {"count": 10, "indexes": list(range(0, 2000, 200)),
                                    "scores": [40.0] * 10, "median": 54.0, "mad": 2.0}}}
summary = {"rows": 2000, "numeric": {"amount": {"count": 2000, "mean": 56.0, "std": 30.0,
           "min": 50.0, "p25": 52.0, "p50": 54.0, "p75": 56.0, "max": 458.0, "nulls": 0}},
           "other": {}}
document = {"job_id": job, "state": "succeeded", "errors": [],
            "analyses": {"anomalies": {"tabular": anomalies}, "summary": {"tabular": summary}}}
tenant_blobs().put(tenant, f"tenants/{tenant}/jobs/{job}/result.json",
                   json.dumps(document).encode())
"""
    done = subprocess.run(
        [sys.executable, "-c", code, tenant_id, job_id],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-400:])


def _start_api(env: dict[str, str], cwd: Path, port: int) -> Process:
    argv = api_argv(port)
    process = Process.start("api", argv, env, cwd, cwd / "api.log")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        process.check_alive()
        try:
            if httpx.get(f"http://{HOST}:{port}/healthz", timeout=1).status_code == 200:
                return process
        except httpx.TransportError:
            time.sleep(0.2)
    process.stop()
    raise BenchError("the API did not start")


def _timed(client: httpx.Client, paths: list[str], headers: dict[str, str]) -> float:
    start = time.perf_counter()
    for path in paths:
        answer = client.get(path, headers=headers)
        if answer.status_code != 200:
            raise RuntimeError(f"GET {path}: {answer.status_code} {answer.text[:200]}")
    return (time.perf_counter() - start) * 1000


def _first_load(url: str, cookie_client: httpx.Client) -> tuple[int, int]:
    """Bytes of the jobs page and every asset it references, fetched as a cold browser
    would (no cache, identity encoding); and how many files."""
    page = cookie_client.get("/console/jobs", headers={"Accept-Encoding": "identity"})
    total, files = len(page.content), 1
    for asset in sorted(set(re.findall(r'(?:src|href)="(/console/static/[^"]+)"', page.text))):
        total += len(httpx.get(url + asset, headers={"Accept-Encoding": "identity"}).content)
        files += 1
    return total, files


def run(args: argparse.Namespace) -> bool:
    var_dir = scratch_dir("console") / "var"
    var_dir.mkdir(parents=True, exist_ok=True)
    flush_redis(args.redis, REDIS_DBS)
    recreate_database(DATABASE)
    database_url = sqlalchemy_url(DATABASE)
    env = _env(var_dir, database_url, args.redis)
    api = None
    try:
        celeriac_command(env, var_dir.parent, "migrate")
        seeded = time.perf_counter()
        key, big_job, running_job = _seed(env, var_dir, args.jobs, args.tasks)
        print(
            f"seeded {args.jobs} jobs and a job of {args.tasks} tasks in "
            f"{time.perf_counter() - seeded:.1f} s"
        )
        port = free_port()
        api = _start_api(env, var_dir.parent, port)
        url = f"http://{HOST}:{port}"
        bearer = {"Authorization": f"Bearer {key}"}
        with (
            httpx.Client(base_url=url, timeout=60) as console,
            httpx.Client(base_url=url, timeout=60) as rest,
        ):
            signed = console.post("/console/sign-in", data={"credential": key})
            if signed.status_code not in (200, 303):
                raise RuntimeError(f"sign-in: {signed.status_code}")
            # The first read of the finished job's page draws it (later reads of a
            # finished job reuse the drawing, views.FinishedView); one sample, noisy.
            first_view = _timed(console, [f"/console/jobs/{big_job}"], {})
            pairs = {
                f"jobs list ({args.jobs} jobs)": (["/console/jobs"], ["/v1/jobs?limit=25"]),
                f"job detail ({args.tasks} tasks)": (
                    [f"/console/jobs/{big_job}"],
                    [f"/v1/jobs/{big_job}"],
                ),
                "job detail vs detail + results": (
                    [f"/console/jobs/{big_job}"],
                    [f"/v1/jobs/{big_job}", f"/v1/jobs/{big_job}/results"],
                ),
                # What a page following a running job re-reads on each "changed" event:
                # read and drawn anew every time (views._ended_row_text memoises the text
                # of rows that ended or have not started: they are the same between two
                # real re-reads too; their coordinates move with the axis).
                f"running job re-read ({args.tasks} tasks)": (
                    [f"/console/jobs/{running_job}/live"],
                    [f"/v1/jobs/{running_job}"],
                ),
            }
            times: dict[str, tuple[list[float], list[float]]] = {}
            for name, (page_paths, api_paths) in pairs.items():
                for _ in range(5):  # warm both (caches, plans, templates)
                    _timed(console, page_paths, {})
                    _timed(rest, api_paths, bearer)
                page_ms, api_ms = [], []
                for _ in range(args.requests):
                    page_ms.append(_timed(console, page_paths, {}))
                    api_ms.append(_timed(rest, api_paths, bearer))
                times[name] = (page_ms, api_ms)
            first_load, files = _first_load(url, console)
    finally:
        if api is not None:
            api.stop()
        drop_database(DATABASE)
        flush_redis(args.redis, REDIS_DBS)
        shutil.rmtree(var_dir.parent, ignore_errors=True)

    load = os.getloadavg()
    print(
        f"\nmachine load (1/5/15 min): {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}, "
        f"{os.cpu_count()} cores; {args.requests} requests per side, interleaved\n"
    )
    print(
        f"{'pair':<34}{'console p50':>12}{'p95':>8}{'p99':>8}{'JSON p50':>10}{'p95':>8}"
        f"{'p99':>8}{'p50 x':>7}{'p95 x':>7}"
    )
    ok = True
    for name, (page_ms, api_ms) in times.items():
        p50, p95 = percentile(page_ms, 0.5), percentile(page_ms, 0.95)
        a50, a95 = percentile(api_ms, 0.5), percentile(api_ms, 0.95)
        r50, r95 = p50 / a50, p95 / a95
        print(
            f"{name:<34}{p50:>10.1f}ms{p95:>6.1f}ms{percentile(page_ms, 0.99):>6.1f}ms"
            f"{a50:>8.1f}ms{a95:>6.1f}ms{percentile(api_ms, 0.99):>6.1f}ms"
            f"{r50:>7.2f}{r95:>7.2f}"
        )
        if name != f"job detail ({args.tasks} tasks)":  # the pairs the target is judged on
            ok = ok and r50 <= TARGET_RATIO and r95 <= TARGET_RATIO
            summary(
                "console",
                f"{name} p50",
                p50,
                "ms",
                baseline=f"JSON {a50:.1f} ms",
                ratio=r50,
                target=f"<= {TARGET_RATIO}x at p50 and p95",
                met=r50 <= TARGET_RATIO and r95 <= TARGET_RATIO,
            )
    print(f"\nfirst read of the finished job's page (drawn, one sample): {first_view:.1f} ms")
    print(
        f"\nfirst load of /console/jobs, cold: {first_load / 1000:.1f} KB in {files} files "
        f"(target < {TARGET_FIRST_LOAD / 1000:.0f} KB)"
    )
    ok = ok and first_load < TARGET_FIRST_LOAD
    print(
        f"target (console within {TARGET_RATIO}x of the JSON it replaces, p50 and p95; "
        f"first load under 500 KB): {'met' if ok else 'NOT met'}"
    )
    return ok


if __name__ == "__main__":
    run_main(
        "console",
        parse_args,
        run,
        (BenchError, RuntimeError, psycopg.Error, httpx.HTTPError),
        "the scratch database may be left behind",
    )
