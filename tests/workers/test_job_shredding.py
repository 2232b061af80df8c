"""Deleting a job's data is a crypto-shred (docs/adr/0015), on real processes: real workers
write the job's blobs to S3 on the tests' moto server under the job's own data key
(wrapped under the tenant's KMS key, on the job's row). A copy of every blob taken before
``DELETE /v1/jobs/{id}`` and put back afterwards (a surviving S3 object version, a restored
backup) cannot be decrypted by the platform any more, while the tenant's other jobs, and a
job written before per-job keys, still read."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from conftest import TenantFixture, clear_process_caches
from fastapi.testclient import TestClient
from sqlalchemy import select, update

from celeriac.platform.crypto import KeyUnavailable, describe_envelope
from celeriac.platform.db import get_engine
from celeriac.platform.jobs.data import expire_jobs
from celeriac.platform.models import Job, utcnow
from celeriac.platform.settings import Settings, get_settings
from celeriac.platform.storage.blobs import job_blob_key
from celeriac.platform.tenant_data import tenant_blobs

from aws_support import Aws
from worker_support import Workers, wait_for_job

pytestmark = pytest.mark.slow

MARKER = "shredme-7QpZ"
RECORDS = [{"id": i, "amount": i * 2.5, "note": f"{MARKER} {i}"} for i in range(40)]
PIPELINE = {"datasets": [{"name": "tabular"}], "analyzers": [{"name": "summary"}]}


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
    return worker_env | aws_env


def _run_job(client: TestClient, tenant: TenantFixture) -> str:
    answer = client.post(
        "/v1/jobs", json={"pipeline": PIPELINE, "records": RECORDS}, headers=tenant.headers
    )
    assert answer.status_code == 202, answer.text
    job_id = str(answer.json()["id"])
    assert wait_for_job(client, tenant.headers, job_id, timeout=120)["state"] == "succeeded"
    return job_id


def _objects(aws: Aws, bucket: str, tenant: TenantFixture, job_id: str) -> dict[str, bytes]:
    """Every stored object of the job, as S3 holds it (ciphertext)."""
    s3 = aws.s3()
    prefix = job_blob_key(tenant.id, job_id, "x")[:-1]
    listed = s3.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])
    return {o["Key"]: s3.get_object(Bucket=bucket, Key=o["Key"])["Body"].read() for o in listed}


def _data_key(job_id: str) -> bytes | None:
    with get_engine().connect() as conn:
        value = conn.execute(select(Job.data_key).where(Job.id == job_id)).scalar_one()
    return None if value is None else bytes(value)


def test_a_deleted_jobs_blob_copies_no_longer_decrypt_and_other_jobs_still_read(
    client: TestClient,
    make_tenant: Callable[..., TenantFixture],
    workers: Workers,
    aws: Aws,
    aws_bucket: str,
) -> None:
    tenant = make_tenant("shredded")
    job_id = _run_job(client, tenant)
    kept_id = _run_job(client, tenant)

    # Payload (API), dataset and analysis outputs (compute), result (distribution): all
    # under the job's own key, named by reference only; the key is wrapped on the row.
    copies = _objects(aws, aws_bucket, tenant, job_id)
    assert {k.split("/")[4] for k in copies} >= {
        "payload",
        "datasets",
        "analysis",
        "result.json",
    }, sorted(copies)
    for key, body in copies.items():
        info = describe_envelope(body[:4096])
        assert info.key_reference == f"job:{job_id}", key
        assert info.wrapped_key == b"", key
        assert MARKER.encode() not in body
    assert _data_key(job_id) is not None
    blobs = tenant_blobs()
    plain = {key: blobs.get(tenant.id, key) for key in copies}
    assert any(MARKER.encode() in value for value in plain.values())  # the copies decrypt

    deleted = client.delete(f"/v1/jobs/{job_id}", headers=tenant.headers)
    assert deleted.status_code == 204, deleted.text
    assert _data_key(job_id) is None
    assert _objects(aws, aws_bucket, tenant, job_id) == {}

    # The copies come back (an object version, a restored backup): the platform cannot
    # decrypt them, in this process nor in one that never held the job's key.
    s3 = aws.s3()
    for key, body in copies.items():
        s3.put_object(Bucket=aws_bucket, Key=key, Body=body)
    for fresh in (False, True):
        if fresh:
            clear_process_caches()
        for key in copies:
            with pytest.raises(KeyUnavailable, match="crypto-shredded"):
                tenant_blobs().get(tenant.id, key)
    # Neither does the API: the results and a re-run refuse, saying the data is gone.
    assert client.get(f"/v1/jobs/{job_id}/results", headers=tenant.headers).status_code == 410
    rerun = client.post(f"/v1/jobs/{job_id}/rerun", json={}, headers=tenant.headers)
    assert rerun.status_code == 410
    assert rerun.json()["code"] == "job-data-deleted"

    # The tenant's key is untouched: its other job reads, through the API and the store.
    results = client.get(f"/v1/jobs/{kept_id}/results", headers=tenant.headers)
    assert results.status_code == 200
    assert results.json()["state"] == "succeeded"
    for key in _objects(aws, aws_bucket, tenant, kept_id):
        assert tenant_blobs().get(tenant.id, key)

    # Retention destroys the key the same way.
    with get_engine().begin() as conn:
        conn.execute(
            update(Job).where(Job.id == kept_id).values(finished_at=utcnow().replace(year=2020))
        )
    kept_copies = _objects(aws, aws_bucket, tenant, kept_id)
    assert expire_jobs() >= 1
    assert _data_key(kept_id) is None
    for key, body in kept_copies.items():
        s3.put_object(Bucket=aws_bucket, Key=key, Body=body)
        with pytest.raises(KeyUnavailable, match="crypto-shredded"):
            tenant_blobs().get(tenant.id, key)


def test_a_job_written_before_per_job_keys_still_runs_and_reads(
    client: TestClient,
    make_tenant: Callable[..., TenantFixture],
    workers: Workers,
    aws: Aws,
    aws_bucket: str,
) -> None:
    tenant = make_tenant("legacy")
    # The API as it was before per-job keys: no job key store, so the payload is under
    # the tenant's data key and the row's data_key stays NULL (what the migration leaves
    # on every existing job).
    blobs = tenant_blobs()
    job_keys, blobs.job_keys = blobs.job_keys, None
    try:
        answer = client.post(
            "/v1/jobs", json={"pipeline": PIPELINE, "records": RECORDS}, headers=tenant.headers
        )
    finally:
        blobs.job_keys = job_keys
    assert answer.status_code == 202, answer.text
    job_id = str(answer.json()["id"])
    assert _data_key(job_id) is None
    # The real workers (with per-job keys) read its format-1 payload and keep writing
    # its blobs under the tenant's key, since the job has none.
    assert wait_for_job(client, tenant.headers, job_id, timeout=120)["state"] == "succeeded"
    results = client.get(f"/v1/jobs/{job_id}/results", headers=tenant.headers)
    assert results.status_code == 200
    assert results.json()["state"] == "succeeded"
    stored = _objects(aws, aws_bucket, tenant, job_id)
    assert {k.split("/")[4] for k in stored} >= {"payload", "datasets", "analysis", "result.json"}
    for key, body in stored.items():
        info = describe_envelope(body[:4096])
        assert info.key_reference is None, key
        assert info.wrapped_key, key
    # Deleting it deletes its blobs (there is no job key to destroy; ADR 0015 says so).
    assert client.delete(f"/v1/jobs/{job_id}", headers=tenant.headers).status_code == 204
    assert _objects(aws, aws_bucket, tenant, job_id) == {}
