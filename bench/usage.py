"""Usage records: how many are written per second under the ingest benchmark's load, and
how long billing's summary takes over one million records, next to a plain ``COUNT(*)`` of
the same rows in the same run.

Run from the repository root (needs PostgreSQL and Redis on 127.0.0.1, as the tests do)::

    .venv/bin/python -m bench.usage [--seconds 10] [--concurrency 16] [--records 10]
        [--rounds 2] [--rows 1000000] [--tenants 20] [--days 30] [--repeat 5]

Part 1 uses bench/kit/loadrun.py, as bench.ingest does (its database, Redis dbs, tenant
with quotas too high to refuse anything, API server and load generator): every accepted
job writes its ``jobs.submitted`` record in the job's own transaction, and the records
committed during each measured phase are counted in the database (not inferred from the
202s).

Part 2 adds ``--rows`` records with ``INSERT ... SELECT generate_series`` (``--tenants``
tenants, six metrics, spread over ``--days`` days), runs ANALYZE, then times, median of
``--repeat``: ``SELECT count(*)`` over the table (the baseline), the summary as the API
computes it (``celeriac.platform.usage.service.summarize``: per tenant, metric and month;
per day; per hour for one tenant), and ``GET /v1/usage/summary?granularity=day`` through
the running API with a billing token. Everything is dropped at the end, as bench/ingest.py
does.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import psycopg
from sqlalchemy.orm import Session

from bench.kit import loadrun
from bench.kit.cli import run_main
from bench.kit.env import PG_SERVER
from bench.kit.machine import background_busy
from bench.kit.procs import api_argv, free_port
from bench.kit.report import summary
from celeriac.platform.db import create_db_engine
from celeriac.platform.usage.schemas import Granularity
from celeriac.platform.usage.service import summarize

METRICS = [
    ("jobs.submitted", "job"),
    ("jobs.completed", "job"),
    ("records.processed", "record"),
    ("compute.seconds", "second"),
    ("storage.bytes", "byte"),
    ("webhooks.delivered", "delivery"),
]


def _dsn() -> str:
    return f"{PG_SERVER}/{loadrun.DATABASE}"


class UsageProbe(loadrun.Probe):
    """The load run's probe, which also counts usage records at each snapshot."""

    def __init__(self, servers: list[loadrun.Server]) -> None:
        super().__init__(servers)
        self.db = psycopg.connect(_dsn(), autocommit=True, connect_timeout=5)
        self.counts: list[tuple[float, int]] = []

    def snapshot(self) -> loadrun.Snapshot:
        row = self.db.execute("SELECT count(*) FROM usage_records").fetchone()
        taken = super().snapshot()
        self.counts.append((taken.at, int(row[0]) if row else 0))
        return taken

    def close(self) -> None:
        self.db.close()
        super().close()


def _generate(rows: int, tenants: int, days: int) -> float:
    start = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(
        days=days
    )
    names = [m for m, _ in METRICS]
    units = [u for _, u in METRICS]
    with psycopg.connect(_dsn(), autocommit=True) as conn:
        conn.execute(
            "INSERT INTO tenants (id, slug, name, status, plan, created_at, updated_at) "
            "SELECT gen_random_uuid(), 'usage-' || g, 'usage-' || g, 'active', 'free', now(), "
            "now() FROM generate_series(1, %s) g",
            (tenants,),
        )
        began = time.perf_counter()
        conn.execute(
            """
            WITH t AS (SELECT array_agg(id ORDER BY slug) AS ids FROM tenants
                       WHERE slug LIKE 'usage-%%')
            INSERT INTO usage_records (id, tenant_id, metric, quantity, unit, occurred_at,
                                       recorded_at, properties, source)
            SELECT 'bench_' || g || ':' || (%(names)s::text[])[1 + g %% 6],
                   t.ids[1 + (g / 6) %% %(tenants)s], (%(names)s::text[])[1 + g %% 6],
                   (g %% 1000) / 10.0, (%(units)s::text[])[1 + g %% 6],
                   %(start)s + make_interval(secs => g::float8 * %(span)s / %(rows)s),
                   %(start)s + make_interval(secs => g::float8 * %(span)s / %(rows)s),
                   jsonb_build_object('job_id', g), 'bench'
            FROM generate_series(0, %(rows)s - 1) g, t
            """,
            {
                "names": names,
                "units": units,
                "tenants": tenants,
                "start": start,
                "span": days * 86400,
                "rows": rows,
            },
        )
        took = time.perf_counter() - began
        conn.execute("ANALYZE usage_records")
    return took


def _median_ms(call: Callable[[], Any], repeat: int) -> tuple[float, Any]:
    times, result = [], None
    for _ in range(repeat):
        began = time.perf_counter()
        result = call()
        times.append((time.perf_counter() - began) * 1000)
    return statistics.median(times), result


def _part_two(args: argparse.Namespace, api_url: str, billing_token: str) -> None:
    print(
        f"\npart 2: generating {args.rows:,} usage records ({args.tenants} tenants, 6 metrics, "
        f"{args.days} days) ...",
        flush=True,
    )
    took = _generate(args.rows, args.tenants, args.days)
    with psycopg.connect(_dsn(), autocommit=True) as conn:
        total = int(conn.execute("SELECT count(*) FROM usage_records").fetchone()[0])  # type: ignore[index]
        one_tenant = conn.execute("SELECT id FROM tenants WHERE slug = 'usage-1'").fetchone()[0]  # type: ignore[index]
    print(
        f"  inserted in {took:.1f} s ({args.rows / took:,.0f} rows/s with both indexes); "
        f"table holds {total:,} records",
        flush=True,
    )

    engine = create_db_engine(loadrun.database_url())
    rows: list[tuple[str, float, str]] = []
    try:
        with psycopg.connect(_dsn(), autocommit=True) as conn:
            baseline, _ = _median_ms(
                lambda: conn.execute("SELECT count(*) FROM usage_records").fetchone(), args.repeat
            )
            rows.append(("SELECT count(*) FROM usage_records (baseline)", baseline, "1 row"))
            summed, _ = _median_ms(
                lambda: conn.execute("SELECT sum(quantity) FROM usage_records").fetchone(),
                args.repeat,
            )
            rows.append(("SELECT sum(quantity) FROM usage_records", summed, "1 row"))
        cases: list[tuple[str, Granularity, uuid.UUID | None]] = [
            ("summary by tenant, metric, month", Granularity.MONTH, None),
            ("summary by tenant, metric, day", Granularity.DAY, None),
            ("summary by metric, hour, one tenant", Granularity.HOUR, one_tenant),
        ]
        for label, granularity, tenant_id in cases:
            with Session(engine) as session:

                def run(g: Granularity = granularity, t: uuid.UUID | None = tenant_id) -> Any:
                    return summarize(
                        session,
                        granularity=g,
                        tenant_id=t,
                        metric=None,
                        occurred_after=None,
                        occurred_before=None,
                    )

                ms, totals = _median_ms(run, args.repeat)
            rows.append((label, ms, f"{len(totals):,} totals"))
        headers = {"Authorization": f"Bearer {billing_token}"}
        with httpx.Client(base_url=api_url, headers=headers, timeout=120) as http:

            def fetch() -> Any:
                answer = http.get("/v1/usage/summary", params={"granularity": "day"})
                answer.raise_for_status()
                return answer.json()["data"]

            ms, data = _median_ms(fetch, args.repeat)
        rows.append(("GET /v1/usage/summary?granularity=day (HTTP)", ms, f"{len(data):,} totals"))
    finally:
        engine.dispose()

    print(f"\n  over {total:,} records (median of {args.repeat}):")
    print(f"  {'query':<52}{'ms':>10}{'x count(*)':>12}  result")
    for label, ms, result in rows:
        print(f"  {label:<52}{ms:>10.1f}{ms / baseline:>12.1f}  {result}")


def run(args: argparse.Namespace) -> bool:
    busy = background_busy()
    print(f"machine: {os.cpu_count()} cores, {busy:.0f}% busy before the bench started")
    probe: UsageProbe | None = None
    with loadrun.api_environment(args.var_root) as api:
        try:
            billing_token = api.celeriac("admin", "token", "--role", "billing").strip()
            port = free_port()
            server = api.start_server("ingest", api_argv(port, workers=1), port)
            loadrun.wait_healthy(api.servers)

            print(
                f"\npart 1: usage records written under the ingest load ({args.concurrency} in "
                f"flight, {args.records} records per job, {args.seconds:.0f} s per run)"
            )
            probe = UsageProbe(api.servers)
            rates = []
            for index in range(args.rounds):
                result = loadrun.drive(server, probe, api.api_key, args, api.var_dir)
                (t0, n0), (t1, n1) = probe.counts[-2], probe.counts[-1]
                written = (n1 - n0) / (t1 - t0)
                rates.append(written)
                r = result.result
                print(
                    f"  run {index + 1}: {r['accepted_per_second']:.0f} jobs accepted/s "
                    f"(p99 {r['p99_ms']:.1f} ms, errors {r['errors']}); {n1 - n0} usage "
                    f"records committed in {t1 - t0:.1f} s = {written:.0f} records/s",
                    flush=True,
                )
            rate = statistics.median(rates)
            print(f"  median: {rate:.0f} usage records written per second")
            summary("usage", "usage records written under ingest load", rate, "records/s")
            _part_two(args, server.url, billing_token)
            return True
        finally:
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            if probe is not None:
                probe.close()


def _parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="measured phase per run")
    parser.add_argument("--requests", type=int, default=20000, help="cap per measured phase")
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--records", type=int, default=10, help="records per inline job")
    parser.add_argument("--rounds", type=int, default=2, help="ingest runs")
    parser.add_argument("--client", choices=["raw", "httpx"], default="raw")
    parser.add_argument("--rows", type=int, default=1_000_000, help="records to generate")
    parser.add_argument("--tenants", type=int, default=20)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--repeat", type=int, default=5, help="timings per query (median)")
    parser.add_argument("--var-root", type=Path, default=None, metavar="DIR")
    args = parser.parse_args()
    for name in (
        "seconds",
        "requests",
        "concurrency",
        "records",
        "rounds",
        "rows",
        "tenants",
        "days",
        "repeat",
    ):
        if getattr(args, name) <= 0:
            parser.error(f"--{name} must be positive")
    return args


def main() -> None:
    run_main("usage", _parse_args, run, on_interrupt="servers stopped and database dropped")


if __name__ == "__main__":
    main()
