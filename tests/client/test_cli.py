"""``celeriac-client`` commands against a live platform, as a tenant runs them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from conftest import TenantFixture
from standardwebhooks import Webhook

from sdk_support import LivePlatform
from support import free_port
from worker_support import wait_until

pytestmark = pytest.mark.slow

CLI = str(Path(sys.executable).parent / "celeriac-client")


def run(
    platform: LivePlatform, tenant: TenantFixture, *args: str, **env: str
) -> subprocess.CompletedProcess[str]:
    environment = {
        **os.environ,
        "CELERIAC_URL": platform.url,
        "CELERIAC_API_KEY": tenant.key,
        **env,
    }
    return subprocess.run(
        [CLI, *args], env=environment, capture_output=True, text=True, timeout=180, check=False
    )


def test_submit_wait_list_get_results_rerun_watch(
    live_platform: LivePlatform, tenant: TenantFixture, tmp_path: Path
) -> None:
    records = tmp_path / "records.csv"
    records.write_text("id,amount\n" + "".join(f"{i},{i * 2}\n" for i in range(30)))
    submitted = run(
        live_platform,
        tenant,
        "jobs",
        "submit",
        str(records),
        "--pipeline",
        "tabular-summary",
        "--wait",
    )
    assert submitted.returncode == 0, submitted.stderr
    first_line = submitted.stderr.splitlines()[0]
    job_id = first_line.split()[1]
    assert "succeeded" in submitted.stderr
    table = submitted.stdout.splitlines()
    assert table[0].split() == ["analyzer", "dataset", "result"]
    assert any(line.split()[:2] == ["summary", "tabular"] for line in table[2:])

    listed = run(live_platform, tenant, "jobs", "list")
    assert listed.returncode == 0
    assert job_id in listed.stdout
    assert "succeeded" in listed.stdout
    got = json.loads(run(live_platform, tenant, "jobs", "get", job_id).stdout)
    assert got["state"] == "succeeded"
    assert got["record_count"] == 30

    output = tmp_path / "results.json"
    results = run(live_platform, tenant, "jobs", "results", job_id, "--output", str(output))
    assert results.returncode == 0, results.stderr
    stored = json.loads(output.read_text())
    api = httpx.get(
        f"{live_platform.url}/v1/jobs/{job_id}/results",
        headers={"Authorization": f"Bearer {tenant.key}"},
    ).json()
    assert stored == api
    assert stored["analyses"]["summary"]["tabular"]["rows"] == 30

    rerun = run(live_platform, tenant, "jobs", "rerun", job_id, "--priority", "high")
    assert rerun.returncode == 0, rerun.stderr
    again = json.loads(rerun.stdout)
    watched = run(live_platform, tenant, "jobs", "watch", again["id"], "--timeout", "120")
    assert watched.returncode == 0, watched.stderr
    lines = watched.stdout.splitlines()
    assert lines[0].split()[1] == "queued"
    assert lines[-1].split()[1] == "succeeded"
    assert any(" progress " in line for line in lines)

    refused = run(live_platform, tenant, "jobs", "cancel", job_id)
    assert refused.returncode == 1
    assert "409" in refused.stderr
    assert run(live_platform, tenant, "jobs", "delete", job_id).returncode == 0
    gone = run(live_platform, tenant, "jobs", "rerun", job_id)
    assert gone.returncode == 1
    assert "410" in gone.stderr


def test_bad_input_is_a_readable_error(
    live_api: LivePlatform, tenant: TenantFixture, tmp_path: Path
) -> None:
    text = tmp_path / "records.txt"
    text.write_text("hello")
    wrong_type = run(live_api, tenant, "jobs", "submit", str(text), "--pipeline", "full")
    assert wrong_type.returncode == 1
    assert ".csv, .ndjson or .jsonl" in wrong_type.stderr
    unknown = run(live_api, tenant, "jobs", "get", "00000000-0000-0000-0000-000000000000")
    assert unknown.returncode == 1
    assert "404" in unknown.stderr
    no_key = run(live_api, tenant, "jobs", "list", CELERIAC_API_KEY="")
    assert no_key.returncode == 1
    assert "CELERIAC_API_KEY" in no_key.stderr


def test_webhooks_listen_verifies_and_prints_each_event(tmp_path: Path) -> None:
    secret = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    port = free_port()
    env = {**os.environ, "CELERIAC_WEBHOOK_SECRET": secret}
    listener = subprocess.Popen(
        [CLI, "webhooks", "listen", "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    printed: list[str] = []
    assert listener.stdout is not None
    reader = threading.Thread(target=lambda: printed.extend(listener.stdout or []), daemon=True)
    reader.start()
    try:
        url = f"http://127.0.0.1:{port}/"

        def up() -> bool:
            try:
                httpx.post(url, content=b"{}", timeout=1)
            except httpx.HTTPError:
                return False
            return True

        wait_until(up, 30, "the listener to accept connections")
        body = json.dumps(
            {
                "type": "job.succeeded",
                "timestamp": "2026-12-04T00:00:00Z",
                "data": {"job_id": "j1", "state": "succeeded"},
            }
        )
        now = datetime.now(UTC)
        signature = Webhook(secret).sign("msg_1", now, body)
        headers = {
            "webhook-id": "msg_1",
            "webhook-timestamp": str(int(now.timestamp())),
            "webhook-signature": signature,
            "content-type": "application/json",
        }
        accepted = httpx.post(url, content=body, headers=headers)
        assert accepted.status_code == 200
        assert accepted.json() == {"received": "job.succeeded"}
        forged = httpx.post(url, content=body.replace("j1", "j2"), headers=headers)
        assert forged.status_code == 400
        wait_until(lambda: len(printed) >= 3, 30, "three lines from the listener")
    finally:
        listener.terminate()
        listener.wait(timeout=30)
    events = [json.loads(line) for line in printed if line.startswith("{")]
    assert events == [
        {
            "webhook-id": "msg_1",
            "type": "job.succeeded",
            "data": {"job_id": "j1", "state": "succeeded"},
        }
    ]
    assert sum(line.startswith("REJECTED") for line in printed) == 2  # the probe and the forgery
