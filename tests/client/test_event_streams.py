"""``GET /v1/jobs/{id}/events`` across API processes, on disconnect and without Redis."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis
from conftest import TenantFixture

from celeriac.client import Client, JobEvent, JobState
from celeriac.platform.db import get_sessionmaker
from celeriac.platform.jobs.events import channel
from celeriac.platform.jobs.pipelines import ANALYZER, DATASET, PluginInfo, register_plugins
from celeriac.platform.settings import Settings

from sdk_support import LivePlatform, healthy, platform_env
from support import free_port
from worker_support import Workers, wait_until

pytestmark = pytest.mark.slow

RECORDS = [{"id": i, "amount": i * 0.5} for i in range(60)]
SPEC = {"datasets": [{"name": "tabular"}], "analyzers": [{"name": "summary"}]}


def _second_api(var_dir: Path, env: dict[str, str]) -> Iterator[str]:
    port = free_port()
    processes = Workers(var_dir, env)
    processes.start("api-2", "api", "--port", str(port))
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: healthy(url), 60, "the second API to answer")
        yield url
    finally:
        processes.stop_all()


def test_a_stream_cut_on_one_api_process_resumes_on_another_without_loss_or_repeats(
    live_platform: LivePlatform, tenant: TenantFixture, api_settings: Settings, var_dir: Path
) -> None:
    other = _second_api(var_dir, platform_env(api_settings, var_dir))
    second_url = next(other)
    try:
        with (
            Client(base_url=live_platform.url, api_key=tenant.key) as first,
            Client(base_url=second_url, api_key=tenant.key) as second,
        ):
            job = first.jobs.submit(records=RECORDS, pipeline="tabular-summary")
            head: list[JobEvent] = []
            for event in first.jobs.events(job.id, timeout=120):
                head.append(event)
                if event.type == "progress" or len(head) == 3:
                    break  # the client drops the connection here
            tail = list(second.jobs.events(job.id, last_event_id=head[-1].id, timeout=120))
            whole = list(first.jobs.events(job.id, timeout=30))
        assert [e.id for e in head + tail] == [e.id for e in whole]
        assert tail[-1].final
        assert tail[-1].state is JobState.SUCCEEDED
    finally:
        other.close()


def test_a_client_that_goes_away_frees_its_subscription(
    live_api: LivePlatform, tenant: TenantFixture, api_settings: Settings
) -> None:
    with get_sessionmaker().begin() as session:
        register_plugins(
            session,
            [
                PluginInfo(DATASET, "tabular", "1.0", {"type": "object"}, produces="table"),
                PluginInfo(ANALYZER, "summary", "1.0", {"type": "object"}, accepts=("table",)),
            ],
        )
    cache = redis.Redis.from_url(str(api_settings.redis_url))
    with Client(base_url=live_api.url, api_key=tenant.key) as client:
        job = client.jobs.submit(records=RECORDS, pipeline=SPEC)  # no workers: stays queued
        name = channel(job.id)
        received: list[str] = []
        headers = {"Authorization": f"Bearer {tenant.key}"}
        with httpx.stream(
            "GET", f"{live_api.url}/v1/jobs/{job.id}/events", headers=headers, timeout=30
        ) as stream:
            lines = stream.iter_lines()
            while not any(line.startswith("data:") for line in received):
                received.append(next(lines))
            wait_until(
                lambda: dict(cache.pubsub_numsub(name)).get(name.encode()) == 1,
                30,
                "the stream's subscription",
            )
        # The connection is closed: the API process drops the job's channel.
        wait_until(
            lambda: dict(cache.pubsub_numsub(name)).get(name.encode()) == 0,
            30,
            "the subscription to go away",
        )
        data = next(line for line in received if line.startswith("data:"))
        assert json.loads(data.removeprefix("data:"))["state"] == "queued"


def test_without_redis_the_stream_polls_the_database(
    api_settings: Settings, var_dir: Path, tenant: TenantFixture
) -> None:
    with get_sessionmaker().begin() as session:
        register_plugins(
            session,
            [
                PluginInfo(DATASET, "tabular", "1.0", {"type": "object"}, produces="table"),
                PluginInfo(ANALYZER, "summary", "1.0", {"type": "object"}, accepts=("table",)),
            ],
        )
    env = platform_env(api_settings, var_dir)
    env.pop("CELERIAC_REDIS_URL")  # the embedded mode's cache: no pub/sub to wake streams
    api = _second_api(var_dir, env)
    url = next(api)
    try:
        with Client(base_url=url, api_key=tenant.key) as client:
            job = client.jobs.submit(records=RECORDS, pipeline=SPEC)
            seen: list[JobEvent] = []
            first_event = threading.Event()

            def follow() -> None:
                for event in client.jobs.events(job.id, timeout=60):
                    seen.append(event)
                    first_event.set()

            follower = threading.Thread(target=follow)
            follower.start()
            assert first_event.wait(30)
            client.jobs.cancel(job.id)
            follower.join(60)
            assert not follower.is_alive()
        assert [(e.type, e.state) for e in seen] == [
            ("state", JobState.QUEUED),
            ("state", JobState.CANCELLED),
        ]
    finally:
        api.close()
