"""Per-tenant envelope encryption: round trips, tenant isolation, tamper/truncation/
reordering detection, rotation, crypto-shredding and the data key cache.

Tests that take ``provider`` (and ``envelope``, built on it) run twice: on a real keyring
file and on AWS KMS through boto3 against the tests' moto server (tests/aws_server.py).
Tests that take ``keyring`` are about the keyring file itself."""

from __future__ import annotations

import base64
import json
import multiprocessing
import os
import stat
import struct
from collections.abc import Iterator
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Barrier
from pathlib import Path

import pytest

from celeriac.platform.crypto import (
    DecryptionFailed,
    Envelope,
    KeyOperationRefused,
    KeyProvider,
    KeyUnavailable,
    LocalKeyring,
    MalformedEnvelope,
    TenantMismatch,
    describe_envelope,
    envelope_from_settings,
    key_provider_from_settings,
)
from celeriac.platform.crypto.kms import KmsKeyProvider
from celeriac.platform.settings import Settings

from aws_support import Aws

SEGMENT = 64  # small segments make multi-segment objects cheap to build and tamper with
TAG = 16


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def keyring(tmp_path: Path) -> LocalKeyring:
    return LocalKeyring(tmp_path / "keys" / "keyring.json")


@pytest.fixture(params=["local", "kms"])
def provider(request: pytest.FixtureRequest, tmp_path: Path) -> KeyProvider:
    """The local keyring, or KMS (keys of this test's own alias prefix) on moto."""
    if request.param == "local":
        return LocalKeyring(tmp_path / "keys" / "keyring.json")
    aws: Aws = request.getfixturevalue("aws")
    return KmsKeyProvider(aws.kms(), alias_prefix=aws.new_alias_prefix())


@pytest.fixture
def key_ids(provider: KeyProvider) -> dict[str, str]:
    return {tenant: provider.create_tenant_key(tenant) for tenant in ("acme", "globex")}


@pytest.fixture
def envelope(provider: KeyProvider, key_ids: dict[str, str]) -> Envelope:
    return Envelope(provider, segment_bytes=SEGMENT)


def _body_start(blob: bytes) -> int:
    header_length: int = struct.unpack(">I", blob[5:9])[0]
    return 9 + header_length


def _segments(blob: bytes) -> tuple[bytes, list[bytes]]:
    start = _body_start(blob)
    body = blob[start:]
    step = SEGMENT + TAG
    return blob[:start], [body[i : i + step] for i in range(0, len(body), step)]


def _header_document(blob: bytes) -> dict[str, object]:
    document: dict[str, object] = json.loads(blob[9 : _body_start(blob)])
    return document


def _with_header(blob: bytes, document: dict[str, object]) -> bytes:
    body = json.dumps(document, sort_keys=True, separators=(",", ":")).encode()
    return b"CLRE\x01" + struct.pack(">I", len(body)) + body + blob[_body_start(blob) :]


def _chunked(data: bytes, size: int) -> Iterator[bytes]:
    return (data[i : i + size] for i in range(0, len(data), size))


# -- round trips -------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, SEGMENT - 1, SEGMENT, SEGMENT + 1, 3 * SEGMENT, 1000])
def test_bytes_and_stream_forms_round_trip_and_interoperate(envelope: Envelope, size: int) -> None:
    data = os.urandom(size)
    blob = envelope.encrypt("acme", data)
    streamed = b"".join(envelope.encrypt_stream("acme", _chunked(data, 7)))
    for ciphertext in (blob, streamed):
        assert envelope.decrypt("acme", ciphertext) == data
        assert b"".join(envelope.decrypt_stream("acme", _chunked(ciphertext, 5))) == data
    assert blob != streamed  # fresh salt and nonce prefix per object


def test_five_mib_streams_in_segment_sized_chunks(
    provider: KeyProvider, key_ids: dict[str, str]
) -> None:
    envelope = Envelope(provider)  # the default 1 MiB segments
    data = os.urandom(5 * 1024 * 1024)

    encrypted = list(envelope.encrypt_stream("acme", _chunked(data, 64 * 1024)))
    assert len(encrypted[0]) < 1024  # the header comes first, alone
    assert len(encrypted) == 1 + 5
    assert all(len(c) == envelope.segment_bytes + TAG for c in encrypted[1:])

    decrypted = list(envelope.decrypt_stream("acme", iter(encrypted)))
    assert len(decrypted) == 5
    assert all(len(c) <= envelope.segment_bytes for c in decrypted)
    assert b"".join(decrypted) == data


def test_plaintext_does_not_appear_in_the_ciphertext(envelope: Envelope) -> None:
    data = b"confidential customer record " * 20
    blob = envelope.encrypt("acme", data)
    assert b"confidential" not in blob
    assert len(blob) == _body_start(blob) + len(data) + TAG * -(-len(data) // SEGMENT)


# -- tenant isolation and context binding ------------------------------------------------


def test_wrapped_data_key_unwraps_only_with_its_context(
    provider: KeyProvider, key_ids: dict[str, str]
) -> None:
    data_key = provider.generate_data_key(
        provider.tenant_key_id("acme"), {"tenant_id": "acme", "purpose": "test"}
    )
    assert len(data_key.plaintext) == 32
    reordered = {"purpose": "test", "tenant_id": "acme"}
    assert provider.decrypt_data_key(data_key.wrapped, reordered) == data_key.plaintext
    for other in ({"tenant_id": "globex", "purpose": "test"}, {"tenant_id": "acme"}):
        with pytest.raises(DecryptionFailed):
            provider.decrypt_data_key(data_key.wrapped, other)


def test_tenant_cannot_decrypt_another_tenants_object(envelope: Envelope) -> None:
    blob = envelope.encrypt("acme", b"acme's payload")
    with pytest.raises(TenantMismatch):
        envelope.decrypt("globex", blob)
    with pytest.raises(TenantMismatch):
        b"".join(envelope.decrypt_stream("globex", [blob]))


@pytest.mark.parametrize("fresh_process", [False, True])
def test_forged_header_naming_another_tenant_does_not_unwrap_the_key(
    envelope: Envelope, provider: KeyProvider, fresh_process: bool
) -> None:
    blob = envelope.encrypt("acme", b"acme's payload")
    document = _header_document(blob)
    document["ctx"] = {"tenant_id": "globex"}
    forged = _with_header(blob, document)
    # The same process has acme's key cached; it must not be served to globex.
    reader = Envelope(provider, segment_bytes=SEGMENT) if fresh_process else envelope
    with pytest.raises(DecryptionFailed, match="wrapped data key"):
        reader.decrypt("globex", forged)


def test_extra_context_must_match(envelope: Envelope) -> None:
    blob = envelope.encrypt("acme", b"x", {"blob_key": "tenants/acme/a"})
    assert envelope.decrypt("acme", blob, {"blob_key": "tenants/acme/a"}) == b"x"
    for wrong in (None, {"blob_key": "tenants/acme/b"}, {"blob_key": "tenants/acme/a", "x": "y"}):
        with pytest.raises(DecryptionFailed, match="context"):
            envelope.decrypt("acme", blob, wrong)
    with pytest.raises(ValueError, match="is set from the tenant argument"):
        envelope.encrypt("acme", b"x", {"tenant_id": "globex"})


# -- integrity -----------------------------------------------------------------------------


def test_every_flipped_byte_fails_authentication(envelope: Envelope, provider: KeyProvider) -> None:
    data = os.urandom(3 * SEGMENT + 10)
    blob = envelope.encrypt("acme", data)
    fresh = Envelope(provider, segment_bytes=SEGMENT)  # no cached data key: unwraps each time
    for position in range(len(blob)):
        tampered = bytearray(blob)
        tampered[position] ^= 0x01
        for reader in (envelope, fresh):
            with pytest.raises(DecryptionFailed):
                reader.decrypt("acme", bytes(tampered))
        with pytest.raises(DecryptionFailed):
            b"".join(envelope.decrypt_stream("acme", _chunked(bytes(tampered), 50)))


def test_tampered_wrapped_key_fails_at_unwrapping(
    envelope: Envelope, provider: KeyProvider
) -> None:
    blob = envelope.encrypt("acme", b"payload")
    document = _header_document(blob)
    wrapped = bytearray(base64.b64decode(str(document["wdk"])))
    wrapped[-1] ^= 0x01  # the wrapping tag
    document["wdk"] = base64.b64encode(bytes(wrapped)).decode()
    with pytest.raises(DecryptionFailed, match="wrapped data key"):
        Envelope(provider).decrypt("acme", _with_header(blob, document))


def test_truncated_streams_fail(envelope: Envelope) -> None:
    for size in (3 * SEGMENT + 10, 3 * SEGMENT):  # last segment partial, and exactly full
        blob = envelope.encrypt("acme", os.urandom(size))
        header, segments = _segments(blob)
        without_final = header + b"".join(segments[:-1])
        cut_inside = blob[:-5]
        header_only = header
        inside_header = blob[: len(header) - 3]
        for truncated in (without_final, cut_inside, header_only, inside_header):
            with pytest.raises(DecryptionFailed):
                envelope.decrypt("acme", truncated)
            with pytest.raises(DecryptionFailed):
                b"".join(envelope.decrypt_stream("acme", _chunked(truncated, 33)))


def test_stream_yields_authenticated_segments_then_fails_on_truncation(envelope: Envelope) -> None:
    data = os.urandom(3 * SEGMENT + 10)
    header, segments = _segments(envelope.encrypt("acme", data))
    received: list[bytes] = []

    def read_truncated() -> None:
        for chunk in envelope.decrypt_stream("acme", [header, *segments[:-1]]):
            received.append(chunk)

    with pytest.raises(DecryptionFailed, match="final"):
        read_truncated()
    assert b"".join(received) == data[: 2 * SEGMENT]  # what came was genuine, and it said so


def test_reordered_appended_and_spliced_segments_fail(envelope: Envelope) -> None:
    blob = envelope.encrypt("acme", os.urandom(3 * SEGMENT + 10))
    header, segments = _segments(blob)
    other_header, other_segments = _segments(envelope.encrypt("acme", os.urandom(3 * SEGMENT + 10)))
    cases = {
        "swapped": header + segments[1] + segments[0] + b"".join(segments[2:]),
        "final moved": header + segments[0] + segments[3] + segments[1] + segments[2],
        "duplicated": header + segments[0] + b"".join(segments),
        "appended": blob + segments[1],
        "spliced from another object": header + other_segments[0] + b"".join(segments[1:]),
        "other header": other_header + b"".join(segments),
    }
    decrypted = []
    for name, ciphertext in cases.items():
        try:
            envelope.decrypt("acme", ciphertext)
        except DecryptionFailed:
            continue
        decrypted.append(name)
    assert decrypted == []


def test_garbage_is_a_malformed_envelope(envelope: Envelope) -> None:
    for garbage in (b"", b"not an envelope at all", b"CLRE\x02" + bytes(20)):
        with pytest.raises(MalformedEnvelope):
            envelope.decrypt("acme", garbage)


# -- rotation and crypto-shredding ---------------------------------------------------------


def test_rotation_keeps_old_objects_readable_and_uses_the_new_version(
    keyring: LocalKeyring,
) -> None:
    keyring.create_tenant_key("acme")
    envelope = Envelope(keyring, segment_bytes=SEGMENT)
    before = envelope.encrypt("acme", b"written before rotation")
    key_id = keyring.tenant_key_id("acme")
    keyring.rotate_tenant_key(key_id)
    envelope.forget_tenant("acme")  # else the cached data key serves until its TTL
    after = envelope.encrypt("acme", b"written after rotation")

    def version(blob: bytes) -> int:
        return keyring.describe_wrapped(describe_envelope(blob).wrapped_key).version

    assert (version(before), version(after)) == (1, 2)
    assert keyring.tenant_key_id("acme") == key_id
    reader = Envelope(keyring, segment_bytes=SEGMENT)
    assert reader.decrypt("acme", before) == b"written before rotation"
    assert reader.decrypt("acme", after) == b"written after rotation"


def test_destroyed_key_makes_old_objects_unreadable(
    envelope: Envelope, provider: KeyProvider, key_ids: dict[str, str]
) -> None:
    blob = envelope.encrypt("acme", b"to be shredded")
    provider.rotate_tenant_key(key_ids["acme"])
    provider.destroy_tenant_key(key_ids["acme"])
    provider.destroy_tenant_key(key_ids["acme"])  # idempotent
    envelope.forget_tenant("acme")

    with pytest.raises(KeyUnavailable, match="destroyed"):
        envelope.decrypt("acme", blob)
    with pytest.raises(KeyUnavailable, match="destroyed"):
        Envelope(provider).decrypt("acme", blob)
    with pytest.raises(KeyUnavailable):
        envelope.encrypt("acme", b"new data")
    # Globex is untouched.
    assert envelope.decrypt("globex", envelope.encrypt("globex", b"ok")) == b"ok"


def test_destroyed_keyring_key_leaves_no_material_in_the_file(keyring: LocalKeyring) -> None:
    key_id = keyring.create_tenant_key("acme")
    keyring.rotate_tenant_key(key_id)
    material = json.loads(keyring.path.read_text())["keys"][key_id]["versions"]
    keyring.destroy_tenant_key(key_id)
    stored = keyring.path.read_text()
    assert all(secret not in stored for secret in material.values())


def test_rotation_keeps_old_objects_readable_and_new_ones_use_a_fresh_data_key(
    envelope: Envelope, provider: KeyProvider, key_ids: dict[str, str]
) -> None:
    before = envelope.encrypt("acme", b"written before rotation")
    provider.rotate_tenant_key(key_ids["acme"])
    envelope.forget_tenant("acme")
    after = envelope.encrypt("acme", b"written after rotation")
    assert describe_envelope(before).wrapped_key != describe_envelope(after).wrapped_key
    reader = Envelope(provider, segment_bytes=SEGMENT)
    assert reader.decrypt("acme", before) == b"written before rotation"
    assert reader.decrypt("acme", after) == b"written after rotation"


def test_key_creation_is_idempotent_and_a_new_key_follows_destruction(
    keyring: LocalKeyring,
) -> None:
    first = keyring.create_tenant_key("acme")
    assert keyring.create_tenant_key("acme") == first
    keyring.destroy_tenant_key(first)
    keyring.destroy_tenant_key(first)  # idempotent
    with pytest.raises(KeyUnavailable, match="destroyed"):
        keyring.tenant_key_id("acme")
    assert keyring.create_tenant_key("acme") != first
    with pytest.raises(KeyUnavailable, match="no key"):
        keyring.tenant_key_id("nobody")


# -- the keyring file ----------------------------------------------------------------------


def test_keyring_file_and_folder_are_private(keyring: LocalKeyring) -> None:
    keyring.create_tenant_key("acme")
    assert stat.S_IMODE(keyring.path.stat().st_mode) == 0o600
    assert stat.S_IMODE(keyring.path.parent.stat().st_mode) == 0o700
    lock = keyring.path.with_name(keyring.path.name + ".lock")
    assert stat.S_IMODE(lock.stat().st_mode) == 0o600
    assert [p.name for p in keyring.path.parent.iterdir() if p.name.endswith(".tmp")] == []


def test_keyring_readable_by_others_is_refused(keyring: LocalKeyring) -> None:
    keyring.path.chmod(0o644)
    with pytest.raises(PermissionError, match="chmod 600"):
        LocalKeyring(keyring.path)


def test_keys_created_in_one_instance_are_seen_by_another(keyring: LocalKeyring) -> None:
    other = LocalKeyring(keyring.path)
    key_id = keyring.create_tenant_key("acme")
    assert other.tenant_key_id("acme") == key_id
    data_key = other.generate_data_key(key_id, {"tenant_id": "acme"})
    assert keyring.decrypt_data_key(data_key.wrapped, {"tenant_id": "acme"}) == data_key.plaintext


def _create_keys(
    path: str, tenants: list[str], barrier: Barrier, results: Queue[tuple[str, str]]
) -> None:
    keyring = LocalKeyring(Path(path))
    barrier.wait()
    for tenant in tenants:
        results.put((tenant, keyring.create_tenant_key(tenant)))


def test_concurrent_key_creation_from_several_processes_loses_no_key(tmp_path: Path) -> None:
    path = tmp_path / "keyring.json"
    LocalKeyring(path)
    context = multiprocessing.get_context("fork")
    barrier = context.Barrier(4)
    results: Queue[tuple[str, str]] = context.Queue()
    # Distinct tenants per process, plus one tenant that every process creates at once.
    plans = [[f"t{p}-{i}" for i in range(10)] + ["shared"] for p in range(4)]
    processes = [
        context.Process(target=_create_keys, args=(str(path), plan, barrier, results))
        for plan in plans
    ]
    for process in processes:
        process.start()
    created = [results.get(timeout=60) for _ in range(sum(len(p) for p in plans))]
    for process in processes:
        process.join(timeout=60)
        assert process.exitcode == 0

    keyring = LocalKeyring(path)
    assert len({key_id for tenant, key_id in created if tenant == "shared"}) == 1
    for tenant, key_id in created:
        assert keyring.tenant_key_id(tenant) == key_id
    assert len(json.loads(path.read_text())["keys"]) == 41
    envelope = Envelope(keyring)
    assert envelope.decrypt("t3-9", envelope.encrypt("t3-9", b"ok")) == b"ok"


# -- the data key cache --------------------------------------------------------------------


def test_one_data_key_serves_many_objects_within_the_ttl(
    envelope: Envelope, provider: KeyProvider
) -> None:
    blobs = [envelope.encrypt("acme", b"record %d" % i) for i in range(100)]
    assert envelope.provider_calls.generate_data_key == 1
    assert [envelope.decrypt("acme", b) for b in blobs][-1] == b"record 99"
    assert envelope.provider_calls.total == 1  # the generated key was cached for reading too

    reader = Envelope(provider, segment_bytes=SEGMENT)
    for blob in blobs:
        reader.decrypt("acme", blob)
    assert reader.provider_calls.decrypt_data_key == 1


def test_cache_expires_after_the_ttl(provider: KeyProvider, key_ids: dict[str, str]) -> None:
    clock = FakeClock()
    envelope = Envelope(provider, cache_ttl_seconds=300, clock=clock)
    blob = envelope.encrypt("acme", b"x")
    clock.now += 299
    envelope.encrypt("acme", b"x")
    envelope.decrypt("acme", blob)
    assert (
        envelope.provider_calls.generate_data_key,
        envelope.provider_calls.decrypt_data_key,
    ) == (
        1,
        0,
    )
    clock.now += 1
    envelope.encrypt("acme", b"x")
    envelope.decrypt("acme", blob)
    assert (
        envelope.provider_calls.generate_data_key,
        envelope.provider_calls.decrypt_data_key,
    ) == (
        2,
        1,
    )


def test_cache_holds_at_most_its_size(provider: KeyProvider) -> None:
    for tenant in ("a", "b", "c"):
        provider.create_tenant_key(tenant)
    envelope = Envelope(provider, cache_size=2)
    for tenant in ("a", "b", "a", "c"):  # c evicts b, the least recently used
        envelope.encrypt(tenant, b"x")
    assert envelope.provider_calls.generate_data_key == 3
    envelope.encrypt("a", b"x")
    assert envelope.provider_calls.generate_data_key == 3
    envelope.encrypt("b", b"x")
    assert envelope.provider_calls.generate_data_key == 4


def test_cache_size_zero_calls_the_provider_every_time(
    provider: KeyProvider, key_ids: dict[str, str]
) -> None:
    envelope = Envelope(provider, cache_size=0)
    for _ in range(3):
        envelope.decrypt("acme", envelope.encrypt("acme", b"x"))
    assert (
        envelope.provider_calls.generate_data_key,
        envelope.provider_calls.decrypt_data_key,
    ) == (
        3,
        3,
    )


# -- settings ------------------------------------------------------------------------------


def test_factories_build_the_local_implementations(tmp_path: Path) -> None:
    settings = Settings(var_dir=tmp_path, keys={"data_key_cache_size": 7})
    provider = key_provider_from_settings(settings)
    assert isinstance(provider, LocalKeyring)
    assert isinstance(provider, KeyProvider)
    assert provider.path == tmp_path / "keyring.json"
    assert provider.path.exists()
    envelope = envelope_from_settings(settings, provider)
    provider.create_tenant_key("acme")
    assert envelope.decrypt("acme", envelope.encrypt("acme", b"x")) == b"x"


def test_factory_builds_the_kms_provider(tmp_path: Path, aws: Aws) -> None:
    prefix = aws.new_alias_prefix()
    settings = Settings(
        var_dir=tmp_path,
        keys={
            "provider": "kms",
            "kms_endpoint_url": aws.endpoint_url,
            "kms_alias_prefix": prefix,
            "deletion_window_days": 7,
        },
    )
    provider = key_provider_from_settings(settings)
    assert isinstance(provider, KmsKeyProvider)
    assert isinstance(provider, KeyProvider)
    assert (provider.alias_prefix, provider.deletion_window_days) == (prefix, 7)
    envelope = envelope_from_settings(settings, provider)
    provider.create_tenant_key("acme")
    assert envelope.decrypt("acme", envelope.encrypt("acme", b"x")) == b"x"


# -- KMS specifics -------------------------------------------------------------------------


def test_kms_tenant_key_is_tagged_aliased_rotating_and_created_once(aws: Aws) -> None:
    kms = aws.kms()
    provider = KmsKeyProvider(kms, alias_prefix=aws.new_alias_prefix())
    arn = provider.create_tenant_key("acme")
    assert provider.create_tenant_key("acme") == arn  # a retried creation makes no second key
    assert arn.startswith("arn:aws:kms:")
    assert ":key/" in arn
    assert provider.tenant_key_id("acme") == f"{provider.alias_prefix}acme"
    metadata = kms.describe_key(KeyId=provider.tenant_key_id("acme"))["KeyMetadata"]
    assert (metadata["Arn"], metadata["KeySpec"], metadata["KeyUsage"]) == (
        arn,
        "SYMMETRIC_DEFAULT",
        "ENCRYPT_DECRYPT",
    )
    tags = kms.list_resource_tags(KeyId=arn)["Tags"]
    assert {"TagKey": "celeriac:tenant", "TagValue": "acme"} in tags
    assert kms.get_key_rotation_status(KeyId=arn)["KeyRotationEnabled"]
    # The envelope's header names the key KMS used.
    envelope = Envelope(provider)
    assert describe_envelope(envelope.encrypt("acme", b"x")).key_id == arn


def test_kms_rotation_is_on_demand_and_destruction_disables_and_schedules(aws: Aws) -> None:
    """moto records RotateKeyOnDemand without new key material (new material for new data
    keys is proven on the keyring, by
    test_rotation_keeps_old_objects_readable_and_uses_the_new_version); what is proven
    here is the calls and the key's state."""
    kms = aws.kms()
    provider = KmsKeyProvider(kms, alias_prefix=aws.new_alias_prefix(), deletion_window_days=7)
    arn = provider.create_tenant_key("acme")
    provider.rotate_tenant_key(arn)
    rotations = kms.list_key_rotations(KeyId=arn)["Rotations"]
    assert [r["RotationType"] for r in rotations] == ["ON_DEMAND"]

    provider.destroy_tenant_key(arn)
    metadata = kms.describe_key(KeyId=arn)["KeyMetadata"]
    assert metadata["KeyState"] == "PendingDeletion"
    assert not metadata["Enabled"]
    window = metadata["DeletionDate"] - metadata["CreationDate"]
    assert 6.9 < window.total_seconds() / 86400 < 7.1
    with pytest.raises(KeyUnavailable, match="PendingDeletion"):
        provider.create_tenant_key("acme")  # no silent new key under a destroyed tenant


def test_kms_pooled_mode_shares_one_key_and_still_separates_tenants(aws: Aws) -> None:
    kms = aws.kms()
    shared = kms.create_key(Description="pooled")["KeyMetadata"]
    provider = KmsKeyProvider(kms, mode="pooled", pooled_key_id=shared["KeyId"])
    assert (
        provider.create_tenant_key("acme")
        == provider.create_tenant_key("globex")
        == (shared["Arn"])
    )
    envelope = Envelope(provider)
    blob = envelope.encrypt("acme", b"acme's")
    document = _header_document(blob)
    document["ctx"] = {"tenant_id": "globex"}
    with pytest.raises(DecryptionFailed, match="wrapped data key"):
        Envelope(provider).decrypt("globex", _with_header(blob, document))
    with pytest.raises(KeyOperationRefused, match="pooled"):
        provider.rotate_tenant_key(shared["Arn"])
    provider.destroy_tenant_key(shared["Arn"])  # never destroys the shared key
    assert kms.describe_key(KeyId=shared["KeyId"])["KeyMetadata"]["KeyState"] == "Enabled"
    assert envelope.decrypt("acme", blob) == b"acme's"
