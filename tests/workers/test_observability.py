"""Observability on real processes: the API under ``--workers 2``, the three pools and
beat, each with Sentry (to a local sink, through sentry-sdk's own transport), traces (OTLP
to a local sink) and metrics ports; a real Prometheus server scrapes them all.

One job whose records carry a marker fails one analyzer on purpose (pandas quotes the bad
value in its error); the tests check what arrives at each sink and what does not.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import TenantFixture
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from celeriac.platform.db import get_engine, get_sessionmaker
from celeriac.platform.jobs.pipelines import ANALYZER, DATASET, PluginInfo, register_plugins
from celeriac.platform.models import Job, JobTask

from observability_support import (
    free_port,
    otlp_endpoint,
    raw_envelopes,
    scrape,
    sentry_dsn,
    sentry_events,
    sentry_items,
    spans,
    total,
)
from worker_support import Receiver, Workers, wait_for_job, wait_until

pytestmark = pytest.mark.slow

MARKER = "tenant-secret-7f3a9c"
RECORDS = [{"id": i, "amount": float(i), "secret": f"{MARKER}-{i}"} for i in range(10)]
PIPELINE = {
    "datasets": [{"name": "tabular"}],
    "analyzers": [{"name": "summary"}, {"name": "chaos_leak"}],
}
POOLS = ("orchestration", "distribution", "compute")


@dataclass
class Stack:
    workers: Workers
    api_url: str
    ports: dict[str, int]
    sentry: Receiver
    otlp: Receiver
    job: dict[str, Any]
    tenant: TenantFixture
    hook: Receiver


@pytest.fixture
def stack(
    client: TestClient,
    worker_env: dict[str, str],
    var_dir: Path,
    make_tenant: Callable[..., TenantFixture],
) -> Iterator[Stack]:
    sentry, otlp, hook = Receiver(), Receiver(), Receiver()
    worker_env.update(
        {
            "CELERIAC_SENTRY_DSN": sentry_dsn(sentry),
            "CELERIAC_ENVIRONMENT": "observability-test",
            "CELERIAC_OBSERVABILITY__OTLP_ENDPOINT": otlp_endpoint(otlp),
            "CELERIAC_OBSERVABILITY__TRACE_EXPORT_DELAY_MS": "200",
        }
    )
    ports = {name: free_port() for name in (*POOLS, "beat", "api")}
    running = Workers(var_dir, worker_env)
    try:
        for pool in POOLS:
            running.start(
                pool,
                "worker",
                "--pool",
                pool,
                "--metrics-port",
                str(ports[pool]),
                *(["--concurrency", "10"] if pool != "compute" else []),
            )
        running.start("beat", "beat", "--metrics-port", str(ports["beat"]))
        running.start("api", "api", "--workers", "2", "--port", str(ports["api"]))
        api_url = f"http://127.0.0.1:{ports['api']}"
        wait_until(lambda: all("ready." in running.log(p) for p in POOLS), 180, "the pools")
        wait_until(
            lambda: "plugin registry published" in running.log("compute"),
            60,
            "the compute pool's plugins",
        )

        def api_up() -> bool:
            try:
                return httpx.get(f"{api_url}/healthz", timeout=2).status_code == 200
            except httpx.TransportError:
                return False

        wait_until(api_up, 120, "the API")
        tenant = make_tenant("observed")
        client.post(
            "/v1/webhooks", headers=tenant.headers, json={"url": hook.url, "event_types": ["job.*"]}
        )
        body = {"pipeline": PIPELINE, "records": RECORDS}
        submitted = httpx.post(f"{api_url}/v1/jobs", headers=tenant.headers, json=body, timeout=30)
        assert submitted.status_code == 202, submitted.text
        job = wait_for_job(client, tenant.headers, submitted.json()["id"])
        assert job["state"] == "partial", (job, running.log("compute")[-3000:])
        wait_until(lambda: hook.received, 60, "the webhook delivery")
        yield Stack(running, api_url, ports, sentry, otlp, job, tenant, hook)
    finally:
        running.stop_all()
        for sink in (sentry, otlp, hook):
            sink.close()


def _task_lines(log: str, job_id: str) -> list[dict[str, Any]]:
    lines = []
    for line in log.splitlines():
        try:
            parsed = json.loads(line)
        except ValueError:
            continue
        if parsed.get("message") == "task finished" and parsed.get("job_id") == job_id:
            lines.append(parsed)
    return lines


def _sentry_gets_the_failed_task_once_with_tags_and_no_tenant_data(stack: Stack) -> None:
    job_id = stack.job["id"]

    def compute_events() -> list[dict[str, Any]]:
        return [e for e in sentry_events(stack.sentry) if e.get("tags", {}).get("job_id") == job_id]

    (event,) = wait_until(compute_events, 60, "the compute failure in Sentry")
    tags = event["tags"]
    assert tags["pool"] == "compute"
    assert tags["tenant_id"] == stack.tenant.id
    assert tags["task"] == "celeriac.compute.run_task"
    assert event["environment"] == "observability-test"
    assert event["release"].startswith("celeriac@")
    exceptions = event["exception"]["values"]
    assert {e["type"] for e in exceptions} == {"ValueError"}  # pandas chains two
    frames = [f for e in exceptions for f in e.get("stacktrace", {}).get("frames", [])]
    assert any(f.get("function") == "analyze" for f in frames)
    assert all("vars" not in f for f in frames)
    # The marker is in every record and in pandas' error message; it is in no envelope.
    assert stack.sentry.received
    assert not [body for body in raw_envelopes(stack.sentry) if MARKER.encode() in body]


def _one_trace_from_the_request_to_the_webhook(stack: Stack) -> None:
    names_needed = {
        "POST /v1/jobs",
        "run/celeriac.orchestration.start_job",
        "run/celeriac.compute.run_task",
        "run/celeriac.distribution.finalize",
        "run/celeriac.distribution.deliver_webhook",
    }

    def trace_of_job() -> list[Any] | None:
        found = spans(stack.otlp)
        roots = [s for s in found if s.name == "POST /v1/jobs" and s.kind == 2]
        for root in roots:
            same = [s for s in found if s.trace_id == root.trace_id]
            if names_needed <= {s.name for s in same}:
                return same
        return None

    trace = wait_until(trace_of_job, 60, "the job's spans")
    by_name: dict[str, list[Any]] = {}
    for span in trace:
        by_name.setdefault(span.name, []).append(span)
    ids = {s.span_id: s for s in trace}
    # The canvas' shape: start_job's run is under the request (the API writes the
    # request's context into the message, without a publish span of its own); compute
    # runs (one per dataset chunk and per analyzer) are under the trace too.
    (start,) = by_name["run/celeriac.orchestration.start_job"]
    request = ids[start.parent_id]
    assert request.name == "POST /v1/jobs"
    assert request.service == "celeriac-api"
    # FastAPI's own spans of dependencies, endpoint and serialization stay off.
    assert not [s for s in trace if s.name.startswith("fastapi.")]
    assert len(by_name["run/celeriac.compute.run_task"]) >= 3  # tabular, summary, leak
    assert {s.service for s in trace} >= {"celeriac-api", "celeriac-worker"}
    assert all(s.parent_id for s in trace if s.name != "POST /v1/jobs" or s.kind != 2)

    # Log lines written inside a task carry its trace.
    lines = _task_lines(stack.workers.log("compute"), stack.job["id"])
    assert lines
    assert all(line.get("trace_id") == start.trace_id for line in lines)


def _every_task_end_writes_one_json_line(stack: Stack) -> None:
    job_id = stack.job["id"]
    with get_engine().connect() as conn:
        compute_tasks = conn.execute(
            select(func.count()).select_from(JobTask).where(JobTask.job_id == job_id)
        ).scalar_one()
    lines = _task_lines(stack.workers.log("compute"), job_id)
    assert len(lines) == compute_tasks
    for line in lines:
        assert line["task"] == "celeriac.compute.run_task"
        assert line["pool"] == "compute"
        assert line["tenant_id"] == stack.tenant.id
        assert line["task_id"]
        assert line["duration_ms"] >= 0
        assert line["retries"] == 0
        assert MARKER not in json.dumps(line)
    assert sorted(line["state"] for line in lines).count("failed") == 1
    assert {line["plugin"] for line in lines} == {"tabular", "summary", "chaos_leak"}
    orchestration = _task_lines(stack.workers.log("orchestration"), job_id)
    assert [line["task"] for line in orchestration] == ["celeriac.orchestration.start_job"]
    # Beat's every-second housekeeping stays out of the INFO log.
    assert "celeriac.orchestration.release" not in stack.workers.log("beat")


def _each_process_serves_metrics(stack: Stack) -> None:
    compute = scrape(f"http://127.0.0.1:{stack.ports['compute']}/metrics")
    run_task = {"task": "celeriac.compute.run_task", "pool": "compute"}
    assert total(compute, "celeriac_tasks_total", **run_task, outcome="failed") == 1
    assert total(compute, "celeriac_tasks_total", **run_task, outcome="succeeded") >= 2
    assert (
        total(compute, "celeriac_task_duration_seconds_count", **run_task, plugin="chaos_leak") == 1
    )
    assert total(compute, "celeriac_worker_slots", pool="compute", state="free") == 2
    distribution = scrape(f"http://127.0.0.1:{stack.ports['distribution']}/metrics")
    assert total(distribution, "celeriac_webhook_attempts_total", outcome="2xx") == 1
    assert total(distribution, "celeriac_webhook_delivery_seconds_count") == 1
    # The job's end is counted where its lifecycle transition happens (finalize, in the
    # distribution pool); the end of its queue wait where its first compute task is claimed.
    assert total(distribution, "celeriac_jobs_finished_total", state="partial", band="normal") == 1
    assert total(distribution, "celeriac_job_duration_seconds_count", band="normal") == 1
    assert total(compute, "celeriac_job_queue_wait_seconds_count", band="normal") == 1
    orchestration = scrape(f"http://127.0.0.1:{stack.ports['orchestration']}/metrics")
    assert total(orchestration, "celeriac_job_queue_wait_seconds_count") == 0
    assert (
        total(
            orchestration,
            "celeriac_tasks_total",
            task="celeriac.orchestration.start_job",
            outcome="succeeded",
        )
        == 1
    )
    # Two uvicorn processes, one sum: the POST went to one of them.
    api = scrape(f"{stack.api_url}/metrics")
    assert total(api, "celeriac_jobs_submitted_total") == 1
    assert total(api, "celeriac_http_requests_total", route="/v1/jobs", method="POST") == 1
    beat = scrape(f"http://127.0.0.1:{stack.ports['beat']}/metrics")
    assert total(beat, "celeriac_queue_backlog", pool="compute", band="normal") == 0
    assert ("celeriac_queue_oldest_age_seconds", (("band", "high"), ("pool", "compute"))) in beat


def _prometheus_scrapes_every_component_and_agrees_with_the_database(
    stack: Stack, tmp_path: Path
) -> None:
    prometheus = shutil.which("prometheus")
    assert prometheus, "Debian's prometheus package is needed (make installs it)"
    targets = [f"127.0.0.1:{stack.ports[name]}" for name in (*POOLS, "beat", "api")]
    port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        json.dumps(
            {
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "scrape_configs": [
                    {"job_name": "celeriac", "static_configs": [{"targets": targets}]}
                ],
            }
        )
    )
    server = subprocess.Popen(
        [
            prometheus,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=(tmp_path / "prometheus.log").open("wb"),
    )
    try:

        def query(expression: str) -> float | None:
            try:
                answer = httpx.get(
                    f"http://127.0.0.1:{port}/api/v1/query", params={"query": expression}, timeout=5
                ).json()
            except (httpx.TransportError, ValueError):
                return None
            result = answer.get("data", {}).get("result", [])
            return float(result[0]["value"][1]) if result else None

        wait_until(lambda: query("count(up == 1)") == len(targets), 90, "every target up")
        with get_engine().connect() as conn:
            jobs = conn.execute(select(func.count()).select_from(Job)).scalar_one()
            finished = conn.execute(
                select(func.count()).select_from(Job).where(Job.finished_at.is_not(None))
            ).scalar_one()
            compute_runs = conn.execute(select(func.count()).select_from(JobTask)).scalar_one()
        assert query("sum(celeriac_jobs_submitted_total)") == jobs == 1
        assert finished == 1
        assert query('sum(celeriac_jobs_finished_total{state="partial"})') == finished
        runs = 'sum(celeriac_tasks_total{task="celeriac.compute.run_task"})'
        assert query(runs) == compute_runs
        durations = 'sum(celeriac_task_duration_seconds_count{pool="compute"})'
        assert query(durations) == compute_runs
        assert query("sum(celeriac_queue_backlog)") == 0
    finally:
        server.terminate()
        server.wait(timeout=30)


def _beat_checks_in_with_sentry_crons(stack: Stack) -> None:
    """Sentry cron monitors for beat's periodic tasks: beat sends the in-progress check-in
    when it sends the task, the worker that ran it the ok, under one check-in id. Sentry
    Crons knows whole minutes only, so the every-second housekeeping has no monitor."""
    slug = "destroy-deleted-tenants"  # every 60 s: the first is due a minute after start

    def check_ins() -> dict[str, dict[str, Any]] | None:
        found = [c for c in sentry_items(stack.sentry, "check_in") if c["monitor_slug"] == slug]
        by_status = {c["status"]: c for c in found}
        return by_status if {"in_progress", "ok"} <= set(by_status) else None

    by_status = wait_until(check_ins, 150, f"the {slug} check-ins")
    assert by_status["ok"]["check_in_id"] == by_status["in_progress"]["check_in_id"]
    schedule = by_status["in_progress"]["monitor_config"]["schedule"]
    assert schedule == {"type": "interval", "value": 1, "unit": "minute"}
    assert by_status["ok"]["environment"] == "observability-test"
    slugs = {c["monitor_slug"] for c in sentry_items(stack.sentry, "check_in")}
    assert not slugs & {"release", "webhooks", "reconcile"}


def test_a_failing_job_observed_from_every_process(stack: Stack, tmp_path: Path) -> None:
    """One stack (starting it is most of the cost), five observations of the same job,
    then beat's cron check-ins."""
    _sentry_gets_the_failed_task_once_with_tags_and_no_tenant_data(stack)
    _one_trace_from_the_request_to_the_webhook(stack)
    _every_task_end_writes_one_json_line(stack)
    _each_process_serves_metrics(stack)
    _prometheus_scrapes_every_component_and_agrees_with_the_database(stack, tmp_path)
    _beat_checks_in_with_sentry_crons(stack)


def test_queue_wait_ends_at_the_first_compute_start_once_despite_a_redelivery(
    client: TestClient,
    worker_env: dict[str, str],
    var_dir: Path,
    tmp_path: Path,
    make_tenant: Callable[..., TenantFixture],
) -> None:
    """``celeriac_job_queue_wait_seconds`` is submit -> the first compute task's claim,
    observed once per job: three compute tasks run, at least one of them twice (the compute
    children are killed in the middle of the slow task and its message, with any other
    running one, is redelivered), and the histogram holds one observation, equal to what the
    job row says."""
    worker_env.update(
        {"CELERIAC_JOBS__RECONCILE_INTERVAL_SECONDS": "1", "CELERIAC_JOBS__STALL_SECONDS": "5"}
    )
    port = free_port()
    running = Workers(var_dir, worker_env)
    try:
        for pool in POOLS:
            extra = ["--metrics-port", str(port)] if pool == "compute" else ["--concurrency", "10"]
            running.start(pool, "worker", "--pool", pool, *extra)
        running.start("beat", "beat")
        wait_until(lambda: all("ready." in running.log(p) for p in POOLS), 180, "the pools")
        wait_until(
            lambda: "plugin registry published" in running.log("compute"),
            60,
            "the compute pool's plugins",
        )
        tenant = make_tenant("waiting")
        marker = tmp_path / "runs"
        pipeline = {
            "datasets": [{"name": "tabular"}],
            "analyzers": [
                {"name": "summary"},
                {"name": "chaos_sleep", "params": {"seconds": 3, "marker": str(marker)}},
            ],
        }
        answer = client.post(
            "/v1/jobs", headers=tenant.headers, json={"pipeline": pipeline, "records": RECORDS}
        )
        assert answer.status_code == 202, answer.text
        job_id = answer.json()["id"]
        wait_until(marker.exists, 60, "the slow task to start")
        parent = running.processes["compute"].pid
        for pid in Path(f"/proc/{parent}/task/{parent}/children").read_text().split():
            os.kill(int(pid), signal.SIGKILL)  # mid-task: the message is delivered again
        job = wait_for_job(client, tenant.headers, job_id, timeout=90)
        assert job["state"] == "succeeded", job
        assert int(marker.read_text()) == 2

        with get_engine().connect() as conn:
            submitted, started, compute_started = conn.execute(
                select(Job.created_at, Job.started_at, Job.compute_started_at).where(
                    Job.id == job_id
                )
            ).one()
            claims = dict(
                conn.execute(
                    select(JobTask.task_key, JobTask.attempts).where(JobTask.job_id == job_id)
                ).all()
            )
            first_claim = conn.execute(
                select(func.min(JobTask.started_at)).where(
                    JobTask.job_id == job_id, JobTask.stage == "datasets"
                )
            ).scalar_one()
        # At least one task was claimed twice (both analyses may have been running when the
        # children were killed).
        assert sum(claims.values()) > len(claims), claims
        assert compute_started is not None
        assert started is not None
        # The wait ends at the first compute claim, not at the orchestrator's start.
        assert compute_started == first_claim
        assert compute_started > started
        samples = scrape(f"http://127.0.0.1:{port}/metrics")
        wait = {"band": "normal"}
        assert total(samples, "celeriac_job_queue_wait_seconds_count", **wait) == 1
        observed = total(samples, "celeriac_job_queue_wait_seconds_sum", **wait)
        assert observed == pytest.approx((compute_started - submitted).total_seconds(), abs=1e-3)
    finally:
        running.stop_all()


def test_each_api_worker_process_reports_to_sentry_and_logs_json(
    worker_env: dict[str, str],
    var_dir: Path,
    make_tenant: Callable[..., TenantFixture],
) -> None:
    """``celeriac api --workers 2``: each uvicorn worker process sets up Sentry and JSON
    logging itself (the parent only supervises). The blob store breaks (a file where its
    tenants' folder belongs), so every job submission fails to store: a 503 for the
    client, and an error event in Sentry and a JSON log line from whichever process served
    it, without the records' contents."""
    sentry = Receiver()
    blobs = var_dir / "broken-blobs"
    blobs.mkdir()
    (blobs / "tenants").write_text("not a folder")
    port = free_port()
    worker_env.update(
        {
            "CELERIAC_SENTRY_DSN": sentry_dsn(sentry),
            "CELERIAC_ENVIRONMENT": "api-workers-test",
            "CELERIAC_BLOB__LOCAL_DIR": str(blobs),
        }
    )
    running = Workers(var_dir, worker_env)
    try:
        api = running.start("api", "api", "--workers", "2", "--port", str(port))
        url = f"http://127.0.0.1:{port}"

        def api_up() -> bool:
            try:
                return httpx.get(f"{url}/healthz", timeout=2).status_code == 200
            except httpx.TransportError:
                return False

        wait_until(api_up, 120, "the API")
        tenant = make_tenant("served")
        with get_sessionmaker().begin() as session:  # what a compute worker would publish
            register_plugins(
                session,
                [
                    PluginInfo(DATASET, "tabular", "1.0", {"type": "object"}, produces="table"),
                    PluginInfo(ANALYZER, "summary", "1.0", {"type": "object"}, accepts=("table",)),
                ],
            )
        pipeline = {"datasets": [{"name": "tabular"}], "analyzers": [{"name": "summary"}]}
        body = {"pipeline": pipeline, "records": RECORDS}

        def events_from_two_processes() -> list[dict[str, Any]] | None:
            # A new connection each time: the kernel hands it to either process.
            answer = httpx.post(f"{url}/v1/jobs", headers=tenant.headers, json=body, timeout=30)
            assert answer.status_code == 503, answer.text
            assert answer.headers["retry-after"], answer.text
            events = sentry_events(sentry)
            pids = {e["contexts"]["process"]["pid"] for e in events}
            return events if len(pids) >= 2 else None

        events = wait_until(events_from_two_processes, 120, "errors from both API processes")
        children = {
            int(pid) for pid in Path(f"/proc/{api.pid}/task/{api.pid}/children").read_text().split()
        }
        pids = {e["contexts"]["process"]["pid"] for e in events}
        assert len(pids) == 2
        assert pids <= children
        assert api.pid not in pids
        for event in events:
            assert event["level"] == "error"
            assert event["tags"]["component"] == "api"
            assert event["logentry"]["message"].startswith("a job could not be stored")
            assert event["environment"] == "api-workers-test"
        assert not [b for b in raw_envelopes(sentry) if MARKER.encode() in b]

        def json_lines() -> list[dict[str, Any]]:
            lines = []
            for line in running.log("api").splitlines():
                try:
                    lines.append(json.loads(line))
                except ValueError:
                    continue
            return lines

        def errors_logged_by(pid: int) -> list[dict[str, Any]]:
            return [
                line
                for line in json_lines()
                if line.get("process") == pid and line["level"] == "ERROR"
            ]

        for pid in pids:
            wait_until(partial(errors_logged_by, pid), 30, f"process {pid}'s JSON log")
            assert all(
                line["logger"] == "celeriac.platform.jobs.ingest" for line in errors_logged_by(pid)
            )
    finally:
        running.stop_all()
        sentry.close()


def test_a_single_process_api_serves_its_own_request_metrics(
    worker_env: dict[str, str], var_dir: Path
) -> None:
    """``celeriac api`` without ``--workers`` (as ``celeriac up`` runs it) answers ``/metrics``
    with the requests it served: it set the multiprocess directory only after importing
    prometheus-client, kept its values in memory and served an empty page."""
    port = free_port()
    running = Workers(var_dir, worker_env)
    try:
        running.start("api", "api", "--port", str(port))
        url = f"http://127.0.0.1:{port}"

        def healthy() -> bool:
            try:
                return httpx.get(f"{url}/healthz", timeout=2).status_code == 200
            except httpx.TransportError:
                return False

        wait_until(healthy, 120, "the API")
        assert httpx.get(f"{url}/v1/jobs", timeout=10).status_code == 401
        samples = scrape(f"{url}/metrics")
        assert total(samples, "celeriac_http_requests_total", route="/v1/jobs", method="GET") == 1
    finally:
        running.stop_all()
