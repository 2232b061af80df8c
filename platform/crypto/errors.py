"""What can go wrong with tenant keys and encrypted objects.

Every failure to read an encrypted object is a :class:`CryptoError`; callers that only
need "could not decrypt" catch that. The two subclasses tell an operator which of two very
different situations it is: the key is gone (crypto-shredded, or never created), or the
ciphertext does not authenticate (tampered, truncated, another tenant's, or corrupt).
"""

from __future__ import annotations


class CryptoError(Exception):
    """Base class of every key and envelope error."""


class KeyUnavailable(CryptoError):
    """The tenant key is unknown to the provider's records or has been destroyed.

    KMS equivalents: ``NotFoundException``, ``KMSInvalidStateException`` (pending deletion
    or disabled), ``DisabledException``.
    """


class DecryptionFailed(CryptoError):
    """The ciphertext or wrapped key does not authenticate under the given context.

    KMS equivalent: ``InvalidCiphertextException``.
    """


class MalformedEnvelope(DecryptionFailed):
    """The bytes are not an envelope this code can parse (bad magic, version or header)."""


class TenantMismatch(DecryptionFailed):
    """The envelope's encryption context names another tenant than the caller's."""


class KeyOperationRefused(CryptoError):
    """The provider will not do this to the key: a pooled key is not rotated or destroyed
    for one tenant; KMS refused an on-demand rotation (its limit per key, or one running)."""
