"""No tenant record leaves the encrypted blobs: after a whole job on real processes (API,
three worker pools; KMS and S3 on the tests' moto server), a marker string that only the
job's records contain is nowhere in the broker, the cache/result Redis db, any text, JSON
or bytea column of any table, or any process's log, in clear or base64-encoded (as
Celery message bodies are). The job's result, read back through the API, does contain it:
the records were processed, just never stored or sent in clear."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis
from conftest import clear_process_caches
from sqlalchemy import text

from celeriac.platform.auth.jwt import Role, mint_token
from celeriac.platform.db import get_engine
from celeriac.platform.settings import Settings, get_settings

from aws_support import Aws
from support import free_port
from worker_support import Receiver, Reply, Workers, wait_until

pytestmark = pytest.mark.slow

MARKER = "zqxMARKERw7Kp9vTenantSecret"
RECORDS = [
    {
        "id": i,
        "amount": 10 + i,
        "text": f"{MARKER} review {i}: great product, {MARKER}",
        "customer": {"name": f"{MARKER}-{i}"},
    }
    for i in range(200)
]
PIPELINE = {
    "datasets": [{"name": "tabular"}, {"name": "text"}],
    "analyzers": [{"name": "summary"}, {"name": "keywords"}, {"name": "sentiment"}],
}


def marker_forms(marker: str) -> list[bytes]:
    """The marker in clear and as it shows inside base64 at each of the three alignments
    (the characters that do not depend on the neighbouring bytes)."""
    raw = marker.encode()
    forms = [raw]
    for shift in range(3):
        encoded = base64.b64encode(b"\0" * shift + raw)
        start = (shift * 4 + 2) // 3 + 1  # skip characters mixed with the padding bytes
        forms.append(encoded[start : len(encoded) - 4])
    return forms


FORMS = marker_forms(MARKER)


def _found(blob: bytes) -> bool:
    return any(form in blob for form in FORMS)


@pytest.fixture
def aws_bucket(aws: Aws) -> str:
    return aws.new_bucket()


@pytest.fixture
def aws_env(aws: Aws, aws_bucket: str) -> dict[str, str]:
    return {f"CELERIAC_{k}": v for k, v in aws.settings_env(aws_bucket).items()}


@pytest.fixture
def api_settings(
    api_settings: Settings, aws_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> Settings:
    for name, value in aws_env.items():
        monkeypatch.setenv(name, value)
    clear_process_caches()
    return get_settings()


@pytest.fixture
def worker_env(worker_env: dict[str, str], aws_env: dict[str, str]) -> dict[str, str]:
    return worker_env | aws_env | {"CELERIAC_LOG__LEVEL": "DEBUG"}


@pytest.fixture
def api(workers: Workers, worker_env: dict[str, str]) -> Iterator[httpx.Client]:
    """``celeriac api`` as its own process, logging to var/api.log like the workers."""
    port = free_port()
    workers.start("api", "api", "--host", "127.0.0.1", "--port", str(port))
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:

        def ready() -> bool:
            try:
                return client.get("/readyz").status_code == 200
            except httpx.TransportError:
                return False

        wait_until(ready, 60, "the API to answer /readyz")
        yield client


def _redis_values(url: str) -> Iterator[tuple[bytes, bytes]]:
    client = redis.Redis.from_url(url)
    try:
        for key in client.scan_iter(count=1000):
            kind = client.type(key)
            if kind == b"string":
                values = [client.get(key) or b""]
            elif kind == b"list":
                values = client.lrange(key, 0, -1)
            elif kind == b"hash":
                values = [k + b"=" + v for k, v in client.hgetall(key).items()]
            elif kind == b"set":
                values = list(client.smembers(key))
            elif kind == b"zset":
                values = [m for m, _ in client.zrange(key, 0, -1, withscores=True)]
            elif kind == b"stream":
                values = [json.dumps(e, default=repr).encode() for e in client.xrange(key)]
            else:
                values = []
            yield key, key
            for value in values:
                yield key, value
    finally:
        client.close()


def _database_hits(forms: list[bytes] = FORMS) -> list[str]:
    """Every text, JSON or bytea column of every table, searched in SQL for ``forms``."""
    hits = []
    with get_engine().connect() as conn:
        columns = conn.execute(
            text(
                "SELECT table_name, column_name, data_type FROM information_schema.columns "
                "WHERE table_schema = 'public' AND data_type IN "
                "('text', 'character varying', 'character', 'json', 'jsonb', 'bytea', 'ARRAY')"
            )
        ).all()
        assert any(c.table_name == "job_tasks" for c in columns)
        for table, column, data_type in columns:
            for form in forms:
                if data_type == "bytea":
                    where = f'position(:form in "{column}") > 0'
                    value: object = form
                else:
                    where = f'"{column}"::text LIKE :form'
                    value = f"%{form.decode()}%"
                count = conn.execute(
                    text(f'SELECT count(*) FROM "{table}" WHERE {where}'), {"form": value}
                ).scalar_one()
                if count:
                    hits.append(f"{table}.{column} ({data_type}): {count} row(s)")
    return hits


def test_no_record_content_in_broker_redis_database_or_logs(
    api: httpx.Client,
    workers: Workers,
    api_settings: Settings,
    redis_dbs: tuple[int, int],
    redis_broker_url: str,
    var_dir: Path,
    aws: Aws,
    aws_bucket: str,
) -> None:
    admin = {"Authorization": f"Bearer {mint_token(api_settings, 'ops@test', Role.ADMIN)}"}
    tenant = api.post("/v1/admin/tenants", json={"slug": "secretive", "name": "S"}, headers=admin)
    assert tenant.status_code == 201, tenant.text
    key = api.post(
        f"/v1/admin/tenants/{tenant.json()['id']}/keys",
        headers=admin,
        json={"scopes": ["jobs:write", "jobs:read"]},
    ).json()["key"]
    headers = {"Authorization": f"Bearer {key}"}
    kms_before = aws.kms_calls()
    submitted = api.post(
        "/v1/jobs", json={"pipeline": PIPELINE, "records": RECORDS}, headers=headers
    )
    assert submitted.status_code == 202, submitted.text
    job_id = submitted.json()["id"]

    def final() -> dict[str, object] | None:
        job: dict[str, object] = api.get(f"/v1/jobs/{job_id}", headers=headers).json()
        return job if job["state"] in ("succeeded", "partial", "failed") else None

    job = wait_until(final, 180, f"job {job_id} to end", every=0.2)
    assert job["state"] == "succeeded", (job, workers.log("compute")[-3000:])
    results = api.get(f"/v1/jobs/{job_id}/results", headers=headers)
    assert results.status_code == 200
    assert MARKER in results.text
    # Data keys are cached per process: at most one GenerateDataKey per process that
    # writes (API, two compute processes, the pool that finalizes) and one Decrypt per
    # other writer's data key it reads, however many blobs (bench/crypto.py: 100 vs
    # 100,000 records).
    kms_after = aws.kms_calls()
    calls = {op: n - kms_before.get(op, 0) for op, n in kms_after.items()}
    calls = {op: n for op, n in calls.items() if n}
    assert set(calls) <= {"GenerateDataKey", "Decrypt"}, calls
    assert 0 < calls["GenerateDataKey"] <= 4, calls
    assert calls.get("Decrypt", 0) <= 4 * 3, calls

    # S3 holds only envelopes.
    s3 = aws.s3()
    objects = s3.list_objects_v2(Bucket=aws_bucket)["Contents"]
    assert len(objects) >= 6  # payload chunk, 2 datasets, 3 analyses, result
    for item in objects:
        body = s3.get_object(Bucket=aws_bucket, Key=item["Key"])["Body"].read()
        assert body.startswith(b"CLRE"), item["Key"]
        assert not _found(body), item["Key"]

    # The broker and the cache / result backend.
    cache_url = str(api_settings.redis_url)
    scanned = 0
    for url in (redis_broker_url, cache_url):
        for redis_key, value in _redis_values(url):
            scanned += 1
            assert not _found(value), f"marker in Redis {url} key {redis_key!r}"
    assert scanned > 0
    # Every text / JSON / bytea column of every table.
    assert _database_hits() == []
    # Every process's log (the API's included), at DEBUG.
    logs = sorted(var_dir.glob("*.log"))
    assert {p.stem for p in logs} >= {"api", "orchestration", "distribution", "compute"}
    for log in logs:
        content = log.read_bytes()
        assert content, f"{log.name} is empty"
        assert not _found(content), f"marker in {log.name}"


def test_a_task_failing_on_a_marked_value_keeps_it_out_of_the_database_and_logs(
    api: httpx.Client, workers: Workers, api_settings: Settings, var_dir: Path
) -> None:
    """A plugin whose exception quotes a record's value (pandas' "could not convert string
    to float: '...'"): the tenant reads the message in its job, the database holds it
    only encrypted, and no process logs it."""
    admin = {"Authorization": f"Bearer {mint_token(api_settings, 'ops@test', Role.ADMIN)}"}
    tenant = api.post("/v1/admin/tenants", json={"slug": "failing", "name": "F"}, headers=admin)
    assert tenant.status_code == 201, tenant.text
    key = api.post(
        f"/v1/admin/tenants/{tenant.json()['id']}/keys",
        headers=admin,
        json={"scopes": ["jobs:write", "jobs:read"]},
    ).json()["key"]
    headers = {"Authorization": f"Bearer {key}"}
    pipeline = {
        "datasets": [{"name": "tabular"}],
        "analyzers": [{"name": "summary"}, {"name": "chaos_cast"}],
    }
    submitted = api.post(
        "/v1/jobs", json={"pipeline": pipeline, "records": RECORDS}, headers=headers
    )
    assert submitted.status_code == 202, submitted.text
    job_id = submitted.json()["id"]

    def final() -> dict[str, object] | None:
        job: dict[str, object] = api.get(f"/v1/jobs/{job_id}", headers=headers).json()
        return job if job["state"] in ("succeeded", "partial", "failed") else None

    job = wait_until(final, 180, f"job {job_id} to end", every=0.2)
    assert job["state"] == "partial", (job, workers.log("compute")[-3000:])
    (failure,) = job["errors"]
    assert failure["plugin"] == "chaos_cast"
    assert "could not convert string to float" in failure["error"]
    assert MARKER in failure["error"]
    assert _database_hits() == []
    for log in sorted(var_dir.glob("*.log")):
        content = log.read_bytes()
        assert not _found(content), f"marker in {log.name}"
    assert "compute task failed: ValueError" in workers.log("compute")


METADATA_MARKER = "qzvMETADATAm4Rk8Reference"


def test_a_webhook_payload_is_stored_only_encrypted(
    api: httpx.Client, workers: Workers, api_settings: Settings, var_dir: Path
) -> None:
    """A job's webhook event carries its metadata (a tenant's own text) and its error:
    the receiver gets both, the webhook tables hold them only encrypted, and no process
    logs them. The metadata's one clear copy is ``jobs.metadata``, as documented (for
    references, never record content). The record marker (quoted by the failing task)
    is in no table at all."""
    admin = {"Authorization": f"Bearer {mint_token(api_settings, 'ops@test', Role.ADMIN)}"}
    tenant = api.post("/v1/admin/tenants", json={"slug": "hooked", "name": "H"}, headers=admin)
    assert tenant.status_code == 201, tenant.text
    key = api.post(
        f"/v1/admin/tenants/{tenant.json()['id']}/keys",
        headers=admin,
        json={"scopes": ["jobs:write", "jobs:read", "webhooks:manage"]},
    ).json()["key"]
    headers = {"Authorization": f"Bearer {key}"}
    receiver = Receiver(Reply(status=204))
    try:
        hook = api.post(
            "/v1/webhooks", json={"url": receiver.url, "event_types": ["job.*"]}, headers=headers
        )
        assert hook.status_code == 201, hook.text
        pipeline = {
            "datasets": [{"name": "tabular"}],
            "analyzers": [{"name": "summary"}, {"name": "chaos_cast"}],
        }
        submitted = api.post(
            "/v1/jobs",
            json={
                "pipeline": pipeline,
                "records": RECORDS,
                "metadata": {"order": METADATA_MARKER},
            },
            headers=headers,
        )
        assert submitted.status_code == 202, submitted.text
        job_id = submitted.json()["id"]
        wait_until(lambda: receiver.received, 180, f"the webhook of job {job_id}", every=0.2)
    finally:
        receiver.close()
    (event,) = [json.loads(r.body) for r in receiver.received]
    assert event["type"] == "job.partial"
    assert event["data"]["job_id"] == job_id
    assert event["data"]["metadata"] == {"order": METADATA_MARKER}
    # The tenant reads its event back through the API, decrypted.
    messages = api.get("/v1/webhook-messages", headers=headers).json()["data"]
    assert [m["payload"] for m in messages] == [event]

    assert _database_hits() == []
    metadata_forms = marker_forms(METADATA_MARKER)
    assert _database_hits(metadata_forms) == ["jobs.metadata (jsonb): 1 row(s)"]
    for log in sorted(var_dir.glob("*.log")):
        content = log.read_bytes()
        assert not _found(content), f"marker in {log.name}"
        assert not any(form in content for form in metadata_forms), f"metadata in {log.name}"


@pytest.mark.parametrize("prefix", ["", "x", "xy", '[[], {"text": "'])
def test_the_scan_finds_the_marker_in_a_celery_message_body(prefix: str) -> None:
    """The scanner's own check: a marker inside a base64 message body, at any alignment,
    is found (and a message with ids only is not)."""
    body = json.dumps([[], {"text": f"{prefix}{MARKER} and more"}, {}]).encode()
    message = json.dumps({"body": base64.b64encode(body).decode(), "headers": {}}).encode()
    assert _found(message)
    assert _found(f"log line {prefix}{MARKER}".encode())
    clean = json.dumps([[], {"tenant_id": "t", "job_id": "j"}, {}]).encode()
    assert not _found(json.dumps({"body": base64.b64encode(clean).decode()}).encode())
