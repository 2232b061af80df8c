"""Hot blobs in the shared cache on real workers: a job's payload chunks and dataset
partials are cached as envelopes, and after the job no Redis key holds tenant plaintext."""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
from collections.abc import Callable
from pathlib import Path

import pytest
import redis
from conftest import TenantFixture
from fastapi.testclient import TestClient

from celeriac.platform.settings import Settings

from worker_support import Workers, wait_for_job

pytestmark = pytest.mark.slow

SAMPLE = Path(__file__).resolve().parent.parent / "data" / "sample_1000.ndjson"
NEEDLE = "Quetzal-marmalade-7731"


@pytest.fixture
def worker_env(worker_env: dict[str, str]) -> dict[str, str]:
    # The blob store is local here, where blob caching is off unless asked for (ADR 0007).
    return {**worker_env, "CELERIAC_CACHE__BLOBS": "on"}


def _redis_values(url: str) -> list[tuple[bytes, bytes]]:
    """Every (key, value) in a Redis db, whatever the type; kombu message bodies (base64
    inside JSON) are decoded too."""
    client = redis.Redis.from_url(url)
    found: list[tuple[bytes, bytes]] = []
    for key in client.scan_iter(count=1000):
        kind = client.type(key).decode()
        values: list[bytes] = []
        if kind == "string":
            values = [client.get(key) or b""]
        elif kind == "list":
            values = client.lrange(key, 0, -1)
        elif kind == "hash":
            values = [part for item in client.hgetall(key).items() for part in item]
        elif kind == "set":
            values = list(client.smembers(key))
        elif kind == "zset":
            values = [member for member, _ in client.zrange(key, 0, -1, withscores=True)]
        elif kind == "stream":
            values = [v for _, fields in client.xrange(key) for v in fields.values()]
        for value in values:
            found.append((key, value))
            with contextlib.suppress(ValueError, TypeError, binascii.Error, AttributeError):
                message = json.loads(value)
                if message.get("properties", {}).get("body_encoding") == "base64":
                    found.append((key, base64.b64decode(message["body"])))
    client.close()
    return found


def test_a_job_leaves_only_ciphertext_in_redis(
    client: TestClient,
    workers: Workers,
    make_tenant: Callable[..., TenantFixture],
    api_settings: Settings,
) -> None:
    tenant = make_tenant()
    records = [json.loads(line) for line in SAMPLE.read_text().splitlines()[:100]]
    for record in records:
        record["text"] = f"{record['text']} {NEEDLE} says hello."
    submitted = client.post(
        "/v1/jobs", headers=tenant.headers, json={"pipeline": "full", "records": records}
    )
    assert submitted.status_code == 202, submitted.text
    job = wait_for_job(client, tenant.headers, submitted.json()["id"])
    assert job["state"] == "succeeded", (job, workers.log("compute")[-3000:])

    cache_values = _redis_values(str(api_settings.redis_url))
    values = cache_values + _redis_values(api_settings.broker_url)
    assert values, "nothing in Redis to look at"
    assert [key for key, value in values if NEEDLE.encode() in value] == []
    # The cache was used for what several tasks read, as envelopes: the payload chunk (read
    # by both dataset generators) and each dataset partial (read by two analyzers); not for
    # what is read once (analysis outputs, the result document).
    prefix = f"celeriac:cache:blob:tenants/{tenant.id}/jobs/{job['id']}/".encode()
    cached = {
        key.removeprefix(prefix): value for key, value in cache_values if key.startswith(prefix)
    }
    assert sorted(cached) == [
        b"datasets/tabular/00000.parquet",
        b"datasets/text/00000.parquet",
        b"payload/00000.ndjson",
    ]
    assert all(value.startswith(b"CLRE") for value in cached.values())
