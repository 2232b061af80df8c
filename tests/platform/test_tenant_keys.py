"""A tenant's key through the admin API: deletion crypto-shreds (key destroyed, blobs
deleted, usage kept, retried when a step fails) and rotation keeps old data readable.

Every test runs twice: on the embedded backends (keyring file, local blobs) and on AWS
(KMS and S3 through boto3 against the tests' moto server)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from conftest import TenantFixture, clear_process_caches
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from celeriac.platform.api.app import create_app
from celeriac.platform.crypto import Envelope, KeyUnavailable, describe_envelope
from celeriac.platform.crypto.kms import KmsKeyProvider
from celeriac.platform.db import get_sessionmaker
from celeriac.platform.jobs.pipelines import ANALYZER, DATASET, PluginInfo, register_plugins
from celeriac.platform.models import AuditEntry, Job, Tenant, UsageRecord
from celeriac.platform.settings import Settings, get_settings
from celeriac.platform.storage import BlobStore, CachedBlobStore, LocalBlobStore, tenant_prefix
from celeriac.platform.storage.s3 import S3BlobStore
from celeriac.platform.tenant_data import key_provider, tenant_blobs
from celeriac.platform.tenants import destruction

from aws_support import Aws

PLUGINS = [
    PluginInfo(DATASET, "tabular", "1.0", {"type": "object"}, produces="table"),
    PluginInfo(ANALYZER, "summary", "1.0", {"type": "object"}, accepts=("table",)),
]
SPEC = {"datasets": [{"name": "tabular"}], "analyzers": [{"name": "summary"}]}
RECORDS = [{"id": i, "note": f"confidential {i}"} for i in range(3)]


@pytest.fixture(params=["embedded", "aws"])
def backend_settings(
    request: pytest.FixtureRequest, api_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> Settings:
    if request.param == "aws":
        aws: Aws = request.getfixturevalue("aws")
        for name, value in aws.settings_env(aws.new_bucket()).items():
            monkeypatch.setenv(f"CELERIAC_{name}", value)
        monkeypatch.setenv("CELERIAC_KEYS__DELETION_WINDOW_DAYS", "7")
        clear_process_caches()
    settings = get_settings()
    with get_sessionmaker().begin() as session:
        register_plugins(session, PLUGINS)
    return settings


@pytest.fixture
def client(backend_settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(backend_settings), raise_server_exceptions=False) as test_client:
        yield test_client


def _submit(client: TestClient, tenant: TenantFixture) -> Job:
    answer = client.post(
        "/v1/jobs", json={"pipeline": SPEC, "records": RECORDS}, headers=tenant.headers
    )
    assert answer.status_code == 202, answer.text
    with get_sessionmaker()() as session:
        job = session.get(Job, answer.json()["id"])
        assert job is not None
        return job


def _sealed_job_key(job: Job) -> tuple[bytes, dict[str, str]]:
    """The job's data key as its row holds it (an envelope under the tenant's key, as a
    database backup would keep it) and the context it opens with. A job's blobs are under
    that key (docs/adr/0015), so the tenant's key opens them through it."""
    assert job.data_key is not None
    return bytes(job.data_key), {"job_id": str(job.id)}


def _stored(store: BlobStore, tenant_id: str) -> list[str]:
    prefix = tenant_prefix(tenant_id)
    if isinstance(store, CachedBlobStore):  # S3 with the shared cache in front (ADR 0007)
        store = store.store
    if isinstance(store, LocalBlobStore):
        folder = store.root / prefix
        return sorted(p.name for p in folder.iterdir()) if folder.exists() else []
    assert isinstance(store, S3BlobStore)
    answer = store.client.list_objects_v2(Bucket=store.bucket, Prefix=prefix)
    return sorted(o["Key"] for o in answer.get("Contents", []))


def _tenant_row(tenant_id: str) -> Tenant:
    with get_sessionmaker()() as session:
        tenant = session.get(Tenant, tenant_id)
        assert tenant is not None
        return tenant


def _audit_actions(tenant_id: str) -> list[str]:
    with get_sessionmaker()() as session:
        return list(
            session.scalars(
                select(AuditEntry.action)
                .where(AuditEntry.tenant_id == tenant_id)
                .order_by(AuditEntry.occurred_at)
            )
        )


def test_deleting_a_tenant_shreds_its_key_then_deletes_its_blobs_and_keeps_usage(
    client: TestClient,
    admin_headers: dict[str, str],
    make_tenant: Callable[..., TenantFixture],
    backend_settings: Settings,
) -> None:
    tenant, other = make_tenant("doomed"), make_tenant("survivor")
    job, kept = _submit(client, tenant), _submit(client, other)
    chunk = job.payload_key + "00000.ndjson"
    store = tenant_blobs().store
    ciphertext = store.get(chunk)  # a copy, as a backup or a leaked bucket would hold
    assert _stored(store, tenant.id)

    deleted = client.delete(f"/v1/admin/tenants/{tenant.id}", headers=admin_headers)
    assert deleted.status_code == 200
    # The key is destroyed by the time DELETE has answered (right after its commit); the
    # blobs wait for beat's sweep.
    shown = client.get(f"/v1/admin/tenants/{tenant.id}", headers=admin_headers).json()
    assert shown["key_destroyed_at"] is not None
    assert shown["blobs_deleted_at"] is None
    sealed, context = _sealed_job_key(job)
    for reader in (tenant_blobs().envelope, Envelope(key_provider())):
        with pytest.raises(KeyUnavailable, match="destroyed"):
            reader.decrypt(tenant.id, sealed, context)
    # Nor through the store, in the process that made the job's key: it forgot it.
    with pytest.raises(KeyUnavailable, match="destroyed"):
        tenant_blobs().get(tenant.id, chunk)
    assert describe_envelope(ciphertext).key_reference == f"job:{job.id}"
    provider = key_provider()
    if isinstance(provider, KmsKeyProvider):
        metadata = provider.key_state(_tenant_row(tenant.id).key_id or "")
        assert metadata is not None
        assert metadata["KeyState"] == "PendingDeletion"

    assert destruction.destroy_deleted_tenants() == 1
    assert _stored(store, tenant.id) == []
    row = _tenant_row(tenant.id)
    assert row.key_destroyed_at is not None
    assert row.blobs_deleted_at is not None
    assert destruction.destroy_deleted_tenants() == 0  # nothing left to do
    assert _audit_actions(tenant.id)[-3:] == [
        "tenant.delete",
        "tenant.key_destroyed",
        "tenant.blobs_deleted",
    ]
    with get_sessionmaker()() as session:
        usage = session.scalar(
            select(func.count()).select_from(UsageRecord).where(UsageRecord.tenant_id == tenant.id)
        )
    assert usage  # billing keeps the usage records
    # The other tenant is untouched.
    assert tenant_blobs().get(other.id, kept.payload_key + "00000.ndjson")
    assert client.get(f"/v1/jobs/{kept.id}", headers=other.headers).status_code == 200


def test_a_failed_key_destruction_is_retried_by_the_sweep(
    client: TestClient,
    admin_headers: dict[str, str],
    make_tenant: Callable[..., TenantFixture],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    tenant = make_tenant("unlucky")
    job = _submit(client, tenant)
    ciphertext = tenant_blobs().store.get(job.payload_key + "00000.ndjson")
    real = key_provider()

    class Outage:
        """The key service is down (KMS unreachable) for the API's after-commit call."""

        def destroy_tenant_key(self, key_id: str) -> None:
            raise ConnectionError("KMS unreachable")

    monkeypatch.setattr(destruction, "key_provider", Outage)
    deleted = client.delete(f"/v1/admin/tenants/{tenant.id}", headers=admin_headers)
    assert deleted.status_code == 200  # the deletion stands
    assert _tenant_row(tenant.id).key_destroyed_at is None
    assert destruction.destroy_deleted_tenants() == 0  # still down: left for the next sweep
    assert _tenant_row(tenant.id).key_destroyed_at is None

    monkeypatch.setattr(destruction, "key_provider", lambda: real)
    assert destruction.destroy_deleted_tenants() == 1
    row = _tenant_row(tenant.id)
    assert row.key_destroyed_at is not None
    assert row.blobs_deleted_at is not None
    sealed, context = _sealed_job_key(job)
    with pytest.raises(KeyUnavailable, match="destroyed"):
        Envelope(real).decrypt(tenant.id, sealed, context)
    assert describe_envelope(ciphertext).key_reference == f"job:{job.id}"


def test_rotation_keeps_old_data_readable_and_is_audited(
    client: TestClient, admin_headers: dict[str, str], make_tenant: Callable[..., TenantFixture]
) -> None:
    tenant = make_tenant("rotating")
    before = _submit(client, tenant)
    rotated = client.post(f"/v1/admin/tenants/{tenant.id}/rotate-key", headers=admin_headers)
    assert rotated.status_code == 200, rotated.text
    assert rotated.json()["key_id"] == _tenant_row(tenant.id).key_id
    assert _audit_actions(tenant.id)[-1] == "tenant.rotate_key"
    after = _submit(client, tenant)

    # The jobs' keys are wrapped under the tenant's data key. This process dropped its
    # cached one: the new job's key is wrapped under a new one.
    (old, old_context), (new, new_context) = (_sealed_job_key(j) for j in (before, after))
    assert describe_envelope(old).wrapped_key != describe_envelope(new).wrapped_key
    reader = Envelope(key_provider())  # no cache: unwraps both through the provider
    for sealed, context in ((old, old_context), (new, new_context)):
        assert len(reader.decrypt(tenant.id, sealed, context)) == 32
    clear_process_caches()  # and the payloads read, each through its job's key
    for job in (before, after):
        assert b"confidential 1" in tenant_blobs().get(tenant.id, job.payload_key + "00000.ndjson")


def test_rotation_errors_are_problems(
    client: TestClient, admin_headers: dict[str, str], make_tenant: Callable[..., TenantFixture]
) -> None:
    tenant = make_tenant("gone")
    client.delete(f"/v1/admin/tenants/{tenant.id}", headers=admin_headers)
    answer = client.post(f"/v1/admin/tenants/{tenant.id}/rotate-key", headers=admin_headers)
    assert answer.status_code == 409
    assert answer.headers["content-type"] == "application/problem+json"
    assert "deleted" in answer.json()["detail"]
    missing = "00000000-0000-4000-8000-000000000000"
    answer = client.post(f"/v1/admin/tenants/{missing}/rotate-key", headers=admin_headers)
    assert answer.status_code == 404
    answer = client.post(
        f"/v1/admin/tenants/{tenant.id}/rotate-key", headers=make_tenant("caller").headers
    )
    assert answer.status_code in (401, 403)
