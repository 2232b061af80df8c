"""The key provider interface: one master key per tenant, data keys wrapped under it.

The operations are the ones AWS KMS offers, so a KMS implementation is a thin mapping:

| method | AWS KMS |
|---|---|
| ``create_tenant_key`` | ``CreateKey`` (tenant tag) + ``CreateAlias`` + ``EnableKeyRotation`` |
| ``tenant_key_id`` | the alias ``alias/celeriac/tenant/<tenant_id>`` (no call needed) |
| ``generate_data_key`` | ``GenerateDataKey`` (``KeySpec=AES_256``, ``EncryptionContext``) |
| ``decrypt_data_key`` | ``Decrypt`` (``CiphertextBlob``, ``EncryptionContext``) |
| ``rotate_tenant_key`` | ``RotateKeyOnDemand`` (old backing keys stay usable for ``Decrypt``) |
| ``destroy_tenant_key`` | ``DisableKey`` + ``ScheduleKeyDeletion`` (``Decrypt`` fails at once) |

The wrapped data key is opaque and names its own master key (and version), as a KMS
ciphertext blob does, so decrypting needs no key id. The encryption context is bound to
the wrapped key: a wrapped key only unwraps with exactly the context it was made with.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from celeriac.platform.settings import Settings

DATA_KEY_BYTES = 32  # AES-256

EncryptionContext = Mapping[str, str]


@dataclass(frozen=True, slots=True)
class DataKey:
    """A fresh data key: the plaintext for this process, the wrapped form to store."""

    plaintext: bytes = field(repr=False)  # never in logs or tracebacks
    wrapped: bytes
    key_id: str


@runtime_checkable
class KeyProvider(Protocol):
    """Per-tenant master keys that wrap and unwrap data keys (local keyring or KMS)."""

    def create_tenant_key(self, tenant_id: str) -> str:
        """Create the tenant's master key and return its id; idempotent while it exists."""
        ...

    def tenant_key_id(self, tenant_id: str) -> str:
        """The id of the tenant's current master key; :class:`KeyUnavailable` if none."""
        ...

    def generate_data_key(self, key_id: str, context: EncryptionContext) -> DataKey:
        """A new random 32-byte data key, wrapped under ``key_id`` bound to ``context``."""
        ...

    def decrypt_data_key(self, wrapped: bytes, context: EncryptionContext) -> bytes:
        """Unwrap a data key; :class:`DecryptionFailed` when the context or bytes differ,
        :class:`KeyUnavailable` when its master key was destroyed."""
        ...

    def rotate_tenant_key(self, key_id: str) -> None:
        """New data keys use new key material; keys wrapped before stay decryptable."""
        ...

    def destroy_tenant_key(self, key_id: str) -> None:
        """Crypto-shred: nothing wrapped under this key (any version) decrypts again."""
        ...


def canonical_context(context: EncryptionContext) -> bytes:
    """The context as canonical JSON bytes (sorted keys, no spaces), for use as AAD.

    Equal dicts give equal bytes whatever their insertion order, so a context written by
    one process authenticates in another.
    """
    for name, value in context.items():
        if not isinstance(name, str) or not isinstance(value, str):
            raise TypeError("encryption context keys and values must be strings")
    return json.dumps(
        dict(context), sort_keys=True, separators=(",", ":"), ensure_ascii=False
    ).encode()


def key_provider_from_settings(settings: Settings) -> KeyProvider:
    """The key provider that ``settings.keys`` selects."""
    keys = settings.keys
    if keys.provider == "kms":
        # Imported here: import cycle (kms imports this module).
        from celeriac.platform.crypto.kms import kms_key_provider_from_settings  # noqa: PLC0415

        return kms_key_provider_from_settings(settings)
    if keys.mode != "per_tenant":
        # A pooled local key could not crypto-shred one tenant without the others.
        raise NotImplementedError(
            f"CELERIAC_KEYS__MODE={keys.mode}: the local keyring supports only per_tenant"
        )
    # Imported here: import cycle (keyring imports this module).
    from celeriac.platform.crypto.keyring import LocalKeyring  # noqa: PLC0415

    return LocalKeyring(keys.keyring_path)
