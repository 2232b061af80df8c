"""Webhook delivery: deliveries per second to a local receiver, and the time from a job's
end to the receiver's 200, next to a direct HTTP post to the same receiver in the same run.

Run from the repository root (needs PostgreSQL and Redis on 127.0.0.1)::

    .venv/bin/python -m bench.webhooks [--events 1000] [--jobs 50] [--threads 16]

The platform runs as in production: ``celeriac api`` and the three worker pools
(``celeriac worker --pool P``), with webhooks allowed to call http on 127.0.0.0/8 (the
receiver) and the per-target throttle lifted (``deliveries_per_second``), since the point is
what the pool can send. The receiver is a threaded HTTP server in this process that answers
200 at once and notes when each message arrived.

- throughput: ``--events`` ``webhook.test`` events are written in one transaction (their
  deliveries published at its commit, as a finishing job's are); the figure is events
  received per second from the commit to the last one. Baseline: the same number of posts
  of the same size sent straight from ``--threads`` threads of this process (httpx), which
  is what the receiver and the loopback can take.
- latency: ``--jobs`` small jobs (10 records, tabular + summary) submitted one at a time;
  for each, the job's ``finished_at`` (PostgreSQL) to the arrival of its ``job.succeeded``
  event. Baseline: one direct post's round trip.

Environment (removed at the end): database ``celeriac_bench_webhooks``, Redis dbs 2 and 3,
a scratch directory under var/bench. Exit status 0 when every event and job arrived, 2 on
a set-up failure.
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx

from bench.kit.cli import BenchError, install_signal_handlers, note, run_main
from bench.kit.env import environment, sample_records
from bench.kit.report import percentile, summary
from celeriac.platform.db import transaction
from celeriac.platform.models import Tenant, WebhookTarget
from celeriac.platform.webhooks import events
from celeriac.platform.webhooks.service import EventType

DATABASE = "celeriac_bench_webhooks"
PIPELINE = {"datasets": [{"name": "tabular"}], "analyzers": [{"name": "summary"}]}
SETTINGS = {
    "CELERIAC_WEBHOOKS__ALLOW_HTTP": "true",
    "CELERIAC_WEBHOOKS__ALLOWED_CIDRS": '["127.0.0.0/8"]',
    "CELERIAC_WEBHOOKS__DELIVERIES_PER_SECOND": "100000",
}


class Receiver:
    """Answers 200 to every POST and notes (arrival time, webhook-id, body)."""

    def __init__(self) -> None:
        self.arrivals: list[tuple[float, str, dict[str, Any]]] = []
        self.lock = threading.Lock()
        self.changed = threading.Condition(self.lock)
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                arrived = time.time()
                self.send_response(200)
                self.send_header("content-length", "0")
                self.end_headers()
                try:
                    event = json.loads(body)
                except ValueError:
                    event = {}
                with receiver.changed:
                    receiver.arrivals.append((arrived, self.headers.get("webhook-id", ""), event))
                    receiver.changed.notify_all()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def wait(self, predicate: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        with self.changed:
            while not predicate():
                left = deadline - time.monotonic()
                if left <= 0:
                    raise BenchError(f"timed out waiting for {what}")
                self.changed.wait(left)

    def count(self) -> int:
        return len(self.arrivals)


def _direct_posts(url: str, count: int, threads: int, body: bytes) -> tuple[float, list[float]]:
    """Posts straight to the receiver: (posts per second, round trips in ms)."""
    local = threading.local()
    times: list[float] = []

    def post(_: int) -> None:
        client = getattr(local, "client", None)
        if client is None:
            client = local.client = httpx.Client(timeout=10)
        started = time.perf_counter()
        client.post(
            url,
            content=body,
            headers={"content-type": "application/json", "webhook-id": "msg_direct"},
        )
        times.append((time.perf_counter() - started) * 1000)

    started = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(post, range(count)))
    return count / (time.perf_counter() - started), times


def run(args: argparse.Namespace) -> bool:
    receiver = Receiver()
    with environment("webhooks", DATABASE, "WARNING", SETTINGS) as env:
        env.start_workers()
        env.start_api()
        api = httpx.Client(
            base_url=env.api_url, timeout=30, headers={"Authorization": f"Bearer {env.api_key}"}
        )
        created = api.post("/v1/webhooks", json={"url": receiver.url, "event_types": ["*"]})
        if created.status_code != 201:
            raise BenchError(f"creating the target failed: {created.text}")
        target_id = created.json()["id"]

        # Throughput: the events of one transaction, published at its commit.
        note(f"throughput: {args.events} events")
        before = receiver.count()
        with transaction() as session:
            target = session.get(WebhookTarget, uuid.UUID(target_id))
            assert target is not None
            tenant_id = target.tenant_id
            assert session.get(Tenant, tenant_id) is not None
            for n in range(args.events):
                events.enqueue(
                    session,
                    tenant_id,
                    EventType.WEBHOOK_TEST,
                    f"bench:{n}",
                    {"n": n, "note": "a benchmark event"},
                    targets=[target],
                )
            started = time.time()
        receiver.wait(lambda: receiver.count() - before >= args.events, 300, "the events")
        elapsed = receiver.arrivals[-1][0] - started
        delivered_per_second = args.events / elapsed
        sample_body = json.dumps(receiver.arrivals[-1][2]).encode()
        direct_rate, direct_times = _direct_posts(
            receiver.url, args.events, args.threads, sample_body
        )

        # Latency: job end -> the receiver has the job's event.
        note(f"latency: {args.jobs} jobs, one at a time")
        records = sample_records()[:10]
        delays: list[float] = []
        for _ in range(args.jobs):
            answer = api.post("/v1/jobs", json={"pipeline": PIPELINE, "records": records})
            if answer.status_code != 202:
                raise BenchError(f"a job was refused: {answer.text}")
            job_id = answer.json()["id"]

            def arrived(job_id: str = job_id) -> bool:
                return any(
                    e.get("data", {}).get("job_id") == job_id for _, _, e in receiver.arrivals[-5:]
                )

            receiver.wait(arrived, 60, f"the event of job {job_id}")
            at = next(
                t
                for t, _, e in reversed(receiver.arrivals)
                if e.get("data", {}).get("job_id") == job_id
            )
            with env.db() as conn:
                row = conn.execute(
                    "SELECT extract(epoch FROM finished_at), state FROM jobs WHERE id = %s",
                    (job_id,),
                ).fetchone()
            if row is None or row[1] != "succeeded":
                raise BenchError(f"job {job_id} ended {row and row[1]}")
            delays.append((at - float(row[0])) * 1000)
        api.close()

    print()
    print(f"{'what':44s} {'per s':>9s} {'p50 ms':>8s} {'p99 ms':>8s}")
    print(
        f"{'deliveries (distribution pool, signed)':44s} {delivered_per_second:9.0f}"
        f" {'':>8s} {'':>8s}"
    )
    direct = f"direct posts ({args.threads} threads, baseline)"
    print(
        f"{direct:44s} {direct_rate:9.0f} {statistics.median(direct_times):8.2f}"
        f" {percentile(direct_times, 0.99):8.2f}"
    )
    print(
        f"{'job end -> receiver has the event':44s} {'':>9s}"
        f" {statistics.median(delays):8.1f} {percentile(delays, 0.99):8.1f}"
    )
    platform = [mid for _, mid, _ in receiver.arrivals if mid != "msg_direct"]
    once = len(platform) == len(set(platform)) == args.events + args.jobs
    print(
        f"\nratio deliveries / direct posts: {delivered_per_second / direct_rate:.2f}; "
        f"{len(set(platform))} messages for {args.events} events and {args.jobs} jobs, "
        f"{len(platform) - len(set(platform))} received twice -> "
        f"{'each once' if once else 'NOT each once'}"
    )
    summary(
        "webhooks",
        "signed deliveries per second",
        delivered_per_second,
        "deliveries/s",
        baseline=f"direct posts {direct_rate:.0f}/s",
        ratio=delivered_per_second / direct_rate,
        target="each event once",
        met=once,
    )
    return bool(once)


def _parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=1000, help="events for the throughput")
    parser.add_argument("--jobs", type=int, default=50, help="jobs for the latency")
    parser.add_argument("--threads", type=int, default=16, help="threads of the baseline")
    args = parser.parse_args()
    if args.events <= 0 or args.jobs <= 0 or args.threads <= 0:
        parser.error("--events, --jobs and --threads must be positive")
    return args


def main() -> None:
    install_signal_handlers()
    run_main("webhooks", _parse_args, run, (BenchError,), "processes stopped, database dropped")


if __name__ == "__main__":
    main()
