"""Envelope encryption of tenant objects: AES-256-GCM under a tenant data key, in segments.

Object layout (integers big-endian)::

    b"CLRE" | u8 format version (1) | u32 header length | header (UTF-8 JSON)
    | segment 0 | segment 1 | ... | final segment

The header is a JSON object::

    {"alg": "AES-256-GCM-HKDF-SHA256-STREAM", "ctx": {"tenant_id": ..., ...},
     "kid": <master key id>, "wdk": <wrapped data key, base64>,
     "salt": <32 random bytes, base64>, "nonce_prefix": <7 random bytes, base64>,
     "segment_bytes": <plaintext bytes per segment, 1 MiB by default>}

Each segment is ``AES-GCM(k, nonce, plaintext, aad)``: ciphertext plus a 16-byte tag, with

* ``k = HKDF-SHA256(data key, salt, info)``: a key of its own per object, so the many
  objects that share a cached data key never share a (key, nonce) pair;
* ``nonce = nonce_prefix (7) | u32 segment index | u8 final flag``;
* ``aad = SHA-256(preamble + header) | u32 segment index | u8 final flag``.

This is the STREAM construction (Hoang, Reyhanitabar, Rogaway, Vizár 2015; Tink's
AES-GCM-HKDF streaming AEAD is built the same way): a changed header byte changes every
segment's AAD; a reordered segment fails under its new index; dropping the final segment
leaves a last segment sealed as "not final"; appended bytes become a segment that fails.
Every segment is authenticated before its plaintext is yielded, but a stream is whole only
when the iterator ends without raising: a reader must discard what it got on an error.

Format version 2 is the same but for the key: its header has ``"ref": <reference>`` in
place of ``"kid"`` and ``"wdk"``. The data key is then not in the object at all: the
platform keeps it (a job's data key, wrapped on the job's row, docs/adr/0015) and the
reader passes a resolver from reference to key. Destroying the kept key makes every copy
of such objects undecryptable, wherever the copies are (crypto-shredding one job).

The data key is wrapped with the context ``{"tenant_id": ...}`` only, so one data key
serves every object of a tenant during the cache TTL (one provider call per TTL, not per
blob); the object's full context (tenant plus the caller's extras, such as the blob key)
is in the header and bound to every segment through the header hash. The tenant is
checked twice on decrypt: the header must name the caller's tenant, and the data key is
unwrapped with the caller's tenant id, never the header's.

Why not the AWS Encryption SDK (checked: aws-encryption-sdk 4.0.7, raw AES and KMS master
key providers, a framed message format, encryption context, a caching CMM)? Its caching
CMM does not cache when the plaintext length is unknown
(``CachingCryptoMaterialsManager._should_cache_encryption_request``), which is every
streamed blob here, so each job would call KMS once per blob; it ships no type hints
(mypy strict needs an override) and adds attrs and wrapt; and a raw master key would
still have to be written to give the local keyring rotation and destruction. The crypto
itself is ``cryptography``'s AESGCM and HKDF; this module only frames segments.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import json
import secrets
import struct
import threading
import time
from collections.abc import Callable, Hashable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from cachetools import TTLCache
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from celeriac.platform.crypto.errors import (
    DecryptionFailed,
    KeyUnavailable,
    MalformedEnvelope,
    TenantMismatch,
)
from celeriac.platform.crypto.keys import (
    DATA_KEY_BYTES,
    DataKey,
    EncryptionContext,
    KeyProvider,
    canonical_context,
    key_provider_from_settings,
)

if TYPE_CHECKING:
    from celeriac.platform.settings import Settings

MAGIC = b"CLRE"
FORMAT_VERSION = 1
# The data key is kept by the platform, named in the header by reference only.
FORMAT_VERSION_KEPT_KEY = 2
ALGORITHM = "AES-256-GCM-HKDF-SHA256-STREAM"
TENANT_CONTEXT_KEY = "tenant_id"
DEFAULT_SEGMENT_BYTES = 1 << 20
# Bounds on what a header may ask a reader to buffer, checked before it is authenticated.
MAX_SEGMENT_BYTES = 16 << 20
MAX_HEADER_BYTES = 64 << 10

_PREAMBLE = struct.Struct(">4sBI")  # magic, format version, header length
_SEGMENT_POSITION = struct.Struct(">IB")  # segment index, final flag
_TAG_BYTES = 16
_SALT_BYTES = 32
_NONCE_PREFIX_BYTES = 7
_MAX_SEGMENTS = 1 << 32
_HKDF_INFO = b"celeriac envelope v1 segment key"


@dataclass(frozen=True, slots=True)
class KeyProviderCalls:
    """How many times an :class:`Envelope` called its key provider (cache misses)."""

    generate_data_key: int
    decrypt_data_key: int

    @property
    def total(self) -> int:
        return self.generate_data_key + self.decrypt_data_key


@dataclass(frozen=True, slots=True)
class KeptKey:
    """A data key the platform keeps outside the objects it encrypts (a job's data key):
    objects name it by ``reference`` only, so destroying the kept copy shreds them all."""

    reference: str
    plaintext: bytes = field(repr=False)  # never in logs or tracebacks


# Reads a kept key by the reference in an object's header: its plaintext (32 bytes), or
# raises (KeyUnavailable once the key was destroyed).
KeyResolver = Callable[[str], bytes]


@dataclass(frozen=True, slots=True)
class _Header:
    context: dict[str, str]
    key_id: str
    wrapped_key: bytes  # empty for a kept key
    salt: bytes
    nonce_prefix: bytes
    segment_bytes: int
    digest: bytes  # SHA-256 of preamble + header bytes, bound into every segment
    reference: str | None = None  # format 2: the kept key's reference


class _SegmentCipher:
    """Seals or opens the segments of one object."""

    def __init__(self, data_key: bytes, header: _Header) -> None:
        derived = HKDF(
            algorithm=hashes.SHA256(), length=32, salt=header.salt, info=_HKDF_INFO
        ).derive(data_key)
        self._aead = AESGCM(derived)
        self._nonce_prefix = header.nonce_prefix
        self._digest = header.digest

    def _nonce_and_aad(self, index: int, final: bool) -> tuple[bytes, bytes]:
        if index >= _MAX_SEGMENTS:
            raise ValueError("object too large for one envelope (2**32 segments)")
        position = _SEGMENT_POSITION.pack(index, final)
        return self._nonce_prefix + position, self._digest + position

    def seal(self, plaintext: bytes | bytearray | memoryview, index: int, final: bool) -> bytes:
        nonce, aad = self._nonce_and_aad(index, final)
        return self._aead.encrypt(nonce, plaintext, aad)

    def open(self, sealed: bytes | bytearray | memoryview, index: int, final: bool) -> bytes:
        nonce, aad = self._nonce_and_aad(index, final)
        try:
            return self._aead.decrypt(nonce, sealed, aad)
        except InvalidTag:
            what = "final segment" if final else "segment"
            raise DecryptionFailed(
                f"{what} {index} does not authenticate "
                "(tampered, truncated, reordered, or another object's)"
            ) from None


class Envelope:
    """Encrypts and decrypts tenant objects under the tenant's data keys.

    Plaintext data keys stay in this process's memory only, at most ``cache_size`` of
    each kind (for encrypting: one current key per tenant; for decrypting: unwrapped keys
    by wrapped bytes and tenant), each for at most ``cache_ttl_seconds``. A size or TTL of
    0 turns caching off. ``clock`` is injectable so tests need not sleep.
    """

    def __init__(
        self,
        provider: KeyProvider,
        *,
        cache_size: int = 1024,
        cache_ttl_seconds: float = 300,
        segment_bytes: int = DEFAULT_SEGMENT_BYTES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not 0 < segment_bytes <= MAX_SEGMENT_BYTES:
            raise ValueError(f"segment_bytes must be in 1..{MAX_SEGMENT_BYTES}")
        self.provider = provider
        self.segment_bytes = segment_bytes
        # TTLCache is not thread-safe: every access holds self._lock. It refuses any item
        # when its maxsize is 0, so a cache that is turned off is never written to.
        self._lock = threading.Lock()
        self._caching = cache_size > 0 and cache_ttl_seconds > 0
        self._encryption_keys: TTLCache[str, DataKey] = TTLCache(
            cache_size, cache_ttl_seconds, timer=clock
        )
        # Keyed by tenant as well as wrapped bytes: a hit must not skip the provider's
        # context check for a tenant that presents another tenant's wrapped key.
        self._decryption_keys: TTLCache[tuple[str, bytes], bytes] = TTLCache(
            cache_size, cache_ttl_seconds, timer=clock
        )
        self._generate_calls = 0
        self._decrypt_calls = 0

    # -- bytes ---------------------------------------------------------------------

    def encrypt(
        self,
        tenant_id: str,
        data: bytes,
        context: EncryptionContext | None = None,
        *,
        key: KeptKey | None = None,
    ) -> bytes:
        """The envelope of ``data`` for ``tenant_id`` (``context``: extra bound pairs),
        under ``key`` when given (format 2), else under the tenant's current data key."""
        view = memoryview(data)
        size = self.segment_bytes
        segments: Iterator[tuple[memoryview | bytes, bool]]
        if len(view) == 0:
            segments = iter([(b"", True)])
        else:
            segments = (
                (view[o : o + size], o + size >= len(view)) for o in range(0, len(view), size)
            )
        return b"".join(self._seal(tenant_id, context, segments, key))

    def decrypt(
        self,
        tenant_id: str,
        blob: bytes,
        context: EncryptionContext | None = None,
        *,
        resolve: KeyResolver | None = None,
    ) -> bytes:
        """The plaintext of an envelope made for ``tenant_id`` with the same ``context``;
        ``resolve`` gives the kept key of a format 2 envelope."""
        view = memoryview(blob)
        header_length = _check_preamble(bytes(view[: _PREAMBLE.size]))
        body_start = _PREAMBLE.size + header_length
        if len(view) < body_start:
            raise MalformedEnvelope("envelope ends inside its header")
        header = _parse_header(bytes(view[:body_start]))
        cipher = self._opening_cipher(tenant_id, context, header, resolve)
        body = view[body_start:]
        if len(body) == 0:
            raise DecryptionFailed("envelope has no final segment (truncated)")
        step = header.segment_bytes + _TAG_BYTES
        return b"".join(
            cipher.open(body[o : o + step], index, final=o + step >= len(body))
            for index, o in enumerate(range(0, len(body), step))
        )

    # -- streams -------------------------------------------------------------------

    def encrypt_stream(
        self,
        tenant_id: str,
        chunks: Iterable[bytes],
        context: EncryptionContext | None = None,
        *,
        key: KeptKey | None = None,
    ) -> Iterator[bytes]:
        """Encrypt chunks of any size lazily; yields the header, then one item per segment,
        so memory stays about one segment whatever the object's size."""
        segments = _plaintext_segments(chunks, self.segment_bytes)
        return self._seal(tenant_id, context, segments, key)

    def decrypt_stream(
        self,
        tenant_id: str,
        chunks: Iterable[bytes],
        context: EncryptionContext | None = None,
        *,
        resolve: KeyResolver | None = None,
    ) -> Iterator[bytes]:
        """Decrypt an envelope given as chunks of any size; yields one item per segment,
        each authenticated. Raises at the end if the stream was truncated."""
        buffer = bytearray()
        cipher: _SegmentCipher | None = None
        header_end = 0
        step = 0
        index = 0
        for chunk in chunks:
            buffer += chunk
            if cipher is None:
                if not header_end and len(buffer) >= _PREAMBLE.size:
                    header_end = _PREAMBLE.size + _check_preamble(bytes(buffer[: _PREAMBLE.size]))
                if not header_end or len(buffer) < header_end:
                    continue
                header = _parse_header(bytes(buffer[:header_end]))
                del buffer[:header_end]
                cipher = self._opening_cipher(tenant_id, context, header, resolve)
                step = header.segment_bytes + _TAG_BYTES
            # Keep one segment back: only the end of the input tells which one is final.
            while len(buffer) > step:
                yield cipher.open(buffer[:step], index, final=False)
                del buffer[:step]
                index += 1
        if cipher is None:
            raise MalformedEnvelope("envelope ends inside its header")
        if not buffer:
            raise DecryptionFailed("envelope has no final segment (truncated)")
        yield cipher.open(buffer, index, final=True)

    # -- keys ----------------------------------------------------------------------

    @property
    def provider_calls(self) -> KeyProviderCalls:
        """Key provider calls made so far (KMS calls, in production)."""
        with self._lock:
            return KeyProviderCalls(self._generate_calls, self._decrypt_calls)

    def forget_tenant(self, tenant_id: str) -> None:
        """Drop the tenant's cached data keys (after its key is rotated or destroyed).

        Other processes keep theirs until the TTL ends: that TTL bounds how long a
        destroyed key's data stays readable by a running worker.
        """
        with self._lock:
            _drop(self._encryption_keys, [tenant_id])
            _drop(self._decryption_keys, [k for k in self._decryption_keys if k[0] == tenant_id])

    def _current_data_key(self, tenant_id: str) -> DataKey:
        with self._lock:
            cached = self._encryption_keys.get(tenant_id)
        if cached is not None:
            return cached
        # Outside the lock: a slow provider must not stall other tenants. Two threads
        # missing at once both generate; the second key simply replaces the first.
        key_id = self.provider.tenant_key_id(tenant_id)
        with self._lock:
            self._generate_calls += 1
        data_key = self.provider.generate_data_key(key_id, _wrapping_context(tenant_id))
        if self._caching:
            with self._lock:
                self._encryption_keys[tenant_id] = data_key
                self._decryption_keys[tenant_id, data_key.wrapped] = data_key.plaintext
        return data_key

    def _unwrapped_data_key(self, tenant_id: str, wrapped: bytes) -> bytes:
        with self._lock:
            cached = self._decryption_keys.get((tenant_id, wrapped))
        if cached is not None:
            return cached
        with self._lock:
            self._decrypt_calls += 1
        plaintext = self.provider.decrypt_data_key(wrapped, _wrapping_context(tenant_id))
        if len(plaintext) != DATA_KEY_BYTES:
            raise DecryptionFailed("unwrapped data key has the wrong length")
        if self._caching:
            with self._lock:
                self._decryption_keys[tenant_id, wrapped] = plaintext
        return plaintext

    # -- shared --------------------------------------------------------------------

    def _seal(
        self,
        tenant_id: str,
        context: EncryptionContext | None,
        segments: Iterator[tuple[memoryview | bytes | bytearray, bool]],
        kept: KeptKey | None = None,
    ) -> Iterator[bytes]:
        full_context = _object_context(tenant_id, context)
        if kept is not None:
            if len(kept.plaintext) != DATA_KEY_BYTES:
                raise ValueError("a kept data key must be 32 bytes")
            header_bytes, header = _build_header(full_context, kept, self.segment_bytes)
            plaintext = kept.plaintext
        else:
            data_key = self._current_data_key(tenant_id)
            header_bytes, header = _build_header(full_context, data_key, self.segment_bytes)
            plaintext = data_key.plaintext
        cipher = _SegmentCipher(plaintext, header)
        yield header_bytes
        for index, (segment, final) in enumerate(segments):
            yield cipher.seal(segment, index, final)

    def _opening_cipher(
        self,
        tenant_id: str,
        context: EncryptionContext | None,
        header: _Header,
        resolve: KeyResolver | None,
    ) -> _SegmentCipher:
        expected = _object_context(tenant_id, context)
        if header.context.get(TENANT_CONTEXT_KEY) != tenant_id:
            raise TenantMismatch("envelope belongs to another tenant")
        if header.context != expected:
            raise DecryptionFailed("envelope's encryption context differs from the expected one")
        if header.reference is None:
            data_key = self._unwrapped_data_key(tenant_id, header.wrapped_key)
        elif resolve is None:
            raise KeyUnavailable(
                f"envelope's data key is kept by the platform ({header.reference}); "
                "no resolver was given"
            )
        else:
            data_key = resolve(header.reference)
            if len(data_key) != DATA_KEY_BYTES:
                raise DecryptionFailed("kept data key has the wrong length")
        return _SegmentCipher(data_key, header)


def _drop(cache: TTLCache[Any, Any], keys: Iterable[Hashable]) -> None:
    for key in keys:
        # TTLCache deletes an entry that expired meanwhile but raises KeyError for it.
        with contextlib.suppress(KeyError):
            del cache[key]


@dataclass(frozen=True, slots=True)
class EnvelopeInfo:
    """What an envelope's header says, read without any key (not yet authenticated)."""

    context: dict[str, str]
    key_id: str  # empty for a kept key
    wrapped_key: bytes  # empty for a kept key
    segment_bytes: int
    key_reference: str | None = None  # a kept key's reference (format 2)


def describe_envelope(blob_start: bytes) -> EnvelopeInfo:
    """Parse the header at the start of an envelope: which key (and, through the wrapped
    data key, which key version) encrypted it, e.g. to find objects to re-encrypt."""
    header_end = _PREAMBLE.size + _check_preamble(bytes(blob_start[: _PREAMBLE.size]))
    if len(blob_start) < header_end:
        raise MalformedEnvelope("envelope ends inside its header")
    header = _parse_header(bytes(blob_start[:header_end]))
    return EnvelopeInfo(
        context=dict(header.context),
        key_id=header.key_id,
        wrapped_key=header.wrapped_key,
        segment_bytes=header.segment_bytes,
        key_reference=header.reference,
    )


def envelope_from_settings(settings: Settings, provider: KeyProvider | None = None) -> Envelope:
    """An :class:`Envelope` with the cache bounds of ``settings.keys``."""
    if provider is None:
        provider = key_provider_from_settings(settings)
    return Envelope(
        provider,
        cache_size=settings.keys.data_key_cache_size,
        cache_ttl_seconds=settings.keys.data_key_cache_ttl_seconds,
    )


def _plaintext_segments(
    chunks: Iterable[bytes], size: int
) -> Iterator[tuple[bytes | bytearray, bool]]:
    buffer = bytearray()
    for chunk in chunks:
        buffer += chunk
        # Strictly more than one segment: the last full one may turn out to be final.
        while len(buffer) > size:
            yield buffer[:size], False
            del buffer[:size]
    yield buffer, True


def _wrapping_context(tenant_id: str) -> dict[str, str]:
    return {TENANT_CONTEXT_KEY: tenant_id}


def _object_context(tenant_id: str, extra: EncryptionContext | None) -> dict[str, str]:
    if not tenant_id or not isinstance(tenant_id, str):
        raise ValueError("tenant_id must be a non-empty string")
    context = {TENANT_CONTEXT_KEY: tenant_id}
    if extra:
        if TENANT_CONTEXT_KEY in extra:
            raise ValueError(f"{TENANT_CONTEXT_KEY!r} is set from the tenant argument")
        context.update(extra)
    canonical_context(context)  # rejects non-string pairs before anything is sealed
    return context


def _build_header(
    context: dict[str, str], data_key: DataKey | KeptKey, segment_bytes: int
) -> tuple[bytes, _Header]:
    salt = secrets.token_bytes(_SALT_BYTES)
    nonce_prefix = secrets.token_bytes(_NONCE_PREFIX_BYTES)
    document: dict[str, Any] = {
        "alg": ALGORITHM,
        "ctx": context,
        "salt": _b64(salt),
        "nonce_prefix": _b64(nonce_prefix),
        "segment_bytes": segment_bytes,
    }
    if isinstance(data_key, KeptKey):
        version, key_id, wrapped, reference = FORMAT_VERSION_KEPT_KEY, "", b"", data_key.reference
        document["ref"] = reference
    else:
        version, key_id, wrapped, reference = (
            FORMAT_VERSION,
            data_key.key_id,
            data_key.wrapped,
            None,
        )
        document["kid"] = key_id
        document["wdk"] = _b64(wrapped)
    body = json.dumps(document, sort_keys=True, separators=(",", ":")).encode()
    if len(body) > MAX_HEADER_BYTES:
        raise ValueError("encryption context too large for an envelope header")
    raw = _PREAMBLE.pack(MAGIC, version, len(body)) + body
    header = _Header(
        context=context,
        key_id=key_id,
        wrapped_key=wrapped,
        salt=salt,
        nonce_prefix=nonce_prefix,
        segment_bytes=segment_bytes,
        digest=hashlib.sha256(raw).digest(),
        reference=reference,
    )
    return raw, header


def _check_preamble(preamble: bytes) -> int:
    """The header length, once magic and version are known good."""
    if len(preamble) < _PREAMBLE.size:
        raise MalformedEnvelope("envelope ends inside its header")
    magic, version, header_length = _PREAMBLE.unpack(preamble)
    if magic != MAGIC:
        raise MalformedEnvelope("not a Celeriac envelope")
    if version not in (FORMAT_VERSION, FORMAT_VERSION_KEPT_KEY):
        raise MalformedEnvelope(f"unsupported envelope format version {version}")
    if not 0 < header_length <= MAX_HEADER_BYTES:
        raise MalformedEnvelope("envelope header length out of bounds")
    return int(header_length)


def _parse_header(raw: bytes) -> _Header:
    """Parse (not yet authenticate: the first segment does that) an envelope header."""
    kept = raw[len(MAGIC)] == FORMAT_VERSION_KEPT_KEY
    reference: str | None = None
    try:
        document = json.loads(raw[_PREAMBLE.size :])
        context = document["ctx"]
        if document["alg"] != ALGORITHM:
            raise MalformedEnvelope(f"unsupported algorithm {document['alg']!r}")
        if not isinstance(context, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in context.items()
        ):
            raise MalformedEnvelope("envelope context is not a string map")
        segment_bytes = document["segment_bytes"]
        if type(segment_bytes) is not int or not 0 < segment_bytes <= MAX_SEGMENT_BYTES:
            raise MalformedEnvelope("envelope segment size out of bounds")
        if kept:
            # Format 2 names a kept key; a wrapped key beside it would defeat shredding.
            if "wdk" in document or "kid" in document:
                raise MalformedEnvelope("a kept-key envelope carries no wrapped key")
            reference = document["ref"]
            if not isinstance(reference, str) or not reference:
                raise MalformedEnvelope("envelope key reference is not a string")
            key_id, wrapped_key = "", b""
        else:
            key_id = document["kid"]
            if not isinstance(key_id, str):
                raise MalformedEnvelope("envelope key id is not a string")
            wrapped_key = _unb64(document["wdk"])
        salt = _unb64(document["salt"])
        nonce_prefix = _unb64(document["nonce_prefix"])
    except (ValueError, KeyError, TypeError, binascii.Error):
        raise MalformedEnvelope("envelope header is malformed") from None
    if len(salt) != _SALT_BYTES or len(nonce_prefix) != _NONCE_PREFIX_BYTES:
        raise MalformedEnvelope("envelope header is malformed")
    if not kept and not wrapped_key:
        raise MalformedEnvelope("envelope header is malformed")
    return _Header(
        context=context,
        key_id=key_id,
        wrapped_key=wrapped_key,
        salt=salt,
        nonce_prefix=nonce_prefix,
        segment_bytes=segment_bytes,
        digest=hashlib.sha256(raw).digest(),
        reference=reference,
    )


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: Any) -> bytes:
    if not isinstance(text, str):
        raise TypeError("expected base64 text")
    return base64.b64decode(text, validate=True)
