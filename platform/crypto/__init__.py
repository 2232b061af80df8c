"""Per-tenant envelope encryption: key providers (a local keyring
file in the embedded mode, AWS KMS in production:
:mod:`celeriac.platform.crypto.kms`) and
the segmented AES-256-GCM envelope that payloads, results and secrets are stored in."""

from celeriac.platform.crypto.envelope import (
    Envelope,
    EnvelopeInfo,
    KeptKey,
    KeyProviderCalls,
    describe_envelope,
    envelope_from_settings,
)
from celeriac.platform.crypto.errors import (
    CryptoError,
    DecryptionFailed,
    KeyOperationRefused,
    KeyUnavailable,
    MalformedEnvelope,
    TenantMismatch,
)
from celeriac.platform.crypto.keyring import LocalKeyring
from celeriac.platform.crypto.keys import (
    DataKey,
    EncryptionContext,
    KeyProvider,
    key_provider_from_settings,
)

__all__ = [
    "CryptoError",
    "DataKey",
    "DecryptionFailed",
    "EncryptionContext",
    "Envelope",
    "EnvelopeInfo",
    "KeptKey",
    "KeyOperationRefused",
    "KeyProvider",
    "KeyProviderCalls",
    "KeyUnavailable",
    "LocalKeyring",
    "MalformedEnvelope",
    "TenantMismatch",
    "describe_envelope",
    "envelope_from_settings",
    "key_provider_from_settings",
]
