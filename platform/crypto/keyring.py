"""The embedded mode's key provider: per-tenant master keys in one local JSON file.

The file (mode 0600, in a directory created 0700) holds, per key id, the owning tenant, a
state and the key versions (random 32 bytes each, base64). A data key is wrapped with
AES-256-GCM under the key's current version; the associated data is the wrapped key's own
prefix (key id and version) followed by the canonical JSON of the encryption context, so a
data key wrapped for tenant A does not unwrap with tenant B's context.

Wrapped data key layout (all integers big-endian)::

    b"CLK1" | u8 len(key_id) | key_id (ASCII) | u32 version | nonce (12) | AES-GCM(dk) (48)

Every change is a read-modify-write of the whole file under an exclusive ``flock`` on a
sibling lock file, written to a temporary file and moved into place with ``os.replace``,
so that the API and several workers creating keys at once lose none, and a reader never
sees a half-written file. Readers take no lock: they see the old file or the new one.

Destroying a key removes its material from the file and leaves a tombstone, so that
decrypting reports "destroyed" rather than "unknown". Copies in backups or in disk blocks
the filesystem has not reused yet are beyond this file's reach; KMS gives that guarantee
in production.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import secrets
import stat
import struct
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from celeriac.platform.crypto.errors import CryptoError, DecryptionFailed, KeyUnavailable
from celeriac.platform.crypto.keys import DATA_KEY_BYTES, DataKey, EncryptionContext
from celeriac.platform.crypto.keys import canonical_context as _canonical_context
from celeriac.platform.files import fsync_directory

_FILE_FORMAT = 1
_WRAP_MAGIC = b"CLK1"
_NONCE_BYTES = 12
_TAG_BYTES = 16
_MASTER_KEY_BYTES = 32
_ENABLED = "enabled"
_DESTROYED = "destroyed"

# A cached read is trusted for at most this long even if the file looks unchanged, which
# bounds staleness should a replaced file ever reuse the inode, mtime and size of the old.
_REREAD_AFTER_SECONDS = 1.0

_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class WrappedKeyInfo:
    """Which master key and version a wrapped data key was made under."""

    key_id: str
    version: int


@dataclass(frozen=True, slots=True)
class _ParsedWrappedKey:
    info: WrappedKeyInfo
    prefix: bytes
    nonce: bytes
    ciphertext: bytes


class LocalKeyring:
    """:class:`~celeriac.platform.crypto.keys.KeyProvider` backed by a local JSON file."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock_path = self.path.with_name(self.path.name + ".lock")
        self._cache_lock = threading.Lock()
        self._cached_signature: tuple[int, int, int] | None = None
        self._cached_at = 0.0
        self._cached_data: dict[str, Any] = {}
        self._ensure_file()

    # -- KeyProvider ---------------------------------------------------------------

    def create_tenant_key(self, tenant_id: str) -> str:
        """Create the tenant's key (version 1) and return its id; an existing enabled key
        is returned as is, so a retried tenant creation does not make a second key."""
        if not tenant_id:
            raise ValueError("tenant_id must not be empty")
        existing = _enabled_key_of(self._read(), tenant_id)
        if existing is not None:
            return existing

        def create(data: dict[str, Any]) -> str:
            existing = _enabled_key_of(data, tenant_id)
            if existing is not None:  # another process created it while we waited
                return existing
            key_id = str(uuid.uuid4())
            data["keys"][key_id] = {
                "tenant_id": tenant_id,
                "state": _ENABLED,
                "created_at": _now(),
                "current_version": 1,
                "versions": {"1": _new_master_key()},
            }
            return key_id

        return self._mutate(create)

    def tenant_key_id(self, tenant_id: str) -> str:
        """The id of the tenant's enabled key."""
        data = self._read()
        key_id = _enabled_key_of(data, tenant_id)
        if key_id is not None:
            return key_id
        destroyed = any(r["tenant_id"] == tenant_id for r in data["keys"].values())
        if destroyed:
            raise KeyUnavailable(f"tenant {tenant_id!r}: its key was destroyed")
        raise KeyUnavailable(f"tenant {tenant_id!r} has no key (create_tenant_key first)")

    def generate_data_key(self, key_id: str, context: EncryptionContext) -> DataKey:
        """A random data key wrapped under the key's current version."""
        record = self._enabled_record(key_id)
        version = int(record["current_version"])
        master = base64.b64decode(record["versions"][str(version)])
        plaintext = secrets.token_bytes(DATA_KEY_BYTES)
        prefix = _wrap_prefix(key_id, version)
        nonce = secrets.token_bytes(_NONCE_BYTES)
        sealed = AESGCM(master).encrypt(nonce, plaintext, prefix + _canonical_context(context))
        return DataKey(plaintext=plaintext, wrapped=prefix + nonce + sealed, key_id=key_id)

    def decrypt_data_key(self, wrapped: bytes, context: EncryptionContext) -> bytes:
        """Unwrap a data key made by :meth:`generate_data_key` with the same context."""
        parsed = _parse_wrapped(wrapped)
        key_id, version = parsed.info.key_id, parsed.info.version
        record = self._read()["keys"].get(key_id)
        if record is None:
            # Indistinguishable from a tampered key id, so it is an authentication failure.
            raise DecryptionFailed("wrapped data key names a key this keyring does not hold")
        if record["state"] == _DESTROYED:
            raise KeyUnavailable(f"key {key_id} was destroyed at {record.get('destroyed_at')}")
        encoded = record["versions"].get(str(version))
        if encoded is None:
            raise DecryptionFailed(f"key {key_id} has no version {version}")
        aad = parsed.prefix + _canonical_context(context)
        try:
            return AESGCM(base64.b64decode(encoded)).decrypt(parsed.nonce, parsed.ciphertext, aad)
        except InvalidTag:
            raise DecryptionFailed(
                "wrapped data key does not authenticate under this encryption context"
            ) from None

    def rotate_tenant_key(self, key_id: str) -> None:
        """Add a new key version and make it current; earlier versions still decrypt."""

        def rotate(data: dict[str, Any]) -> None:
            record = _enabled_record_in(data, key_id)
            version = max(int(v) for v in record["versions"]) + 1
            record["versions"][str(version)] = _new_master_key()
            record["current_version"] = version
            record["rotated_at"] = _now()

        self._mutate(rotate)

    def destroy_tenant_key(self, key_id: str) -> None:
        """Remove every version of the key's material, leaving a tombstone."""

        def destroy(data: dict[str, Any]) -> None:
            record = data["keys"].get(key_id)
            if record is None:
                raise KeyUnavailable(f"unknown key {key_id}")
            if record["state"] == _DESTROYED:
                return
            record["state"] = _DESTROYED
            record["versions"] = {}
            record["current_version"] = None
            record["destroyed_at"] = _now()

        self._mutate(destroy)

    # -- inspection ----------------------------------------------------------------

    @staticmethod
    def describe_wrapped(wrapped: bytes) -> WrappedKeyInfo:
        """The key id and version a wrapped data key names (for tests and operators)."""
        return _parse_wrapped(wrapped).info

    # -- the file ------------------------------------------------------------------

    def _ensure_file(self) -> None:
        if not self.path.parent.exists():
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        if not self.path.exists():
            with self._locked():
                if not self.path.exists():
                    self._write({"format": _FILE_FORMAT, "keys": {}})
        mode = stat.S_IMODE(self.path.stat().st_mode)
        if mode & 0o077:
            raise PermissionError(
                f"keyring {self.path} is readable by group or others (mode {mode:o}); chmod 600 it"
            )

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing the descriptor releases the flock

    def _read(self) -> dict[str, Any]:
        """The keyring's content, re-read only when the file was replaced."""
        st = os.stat(self.path)
        signature = (st.st_ino, st.st_mtime_ns, st.st_size)
        with self._cache_lock:
            fresh = time.monotonic() - self._cached_at < _REREAD_AFTER_SECONDS
            if signature == self._cached_signature and fresh:
                return self._cached_data
        with open(self.path, "rb") as f:
            # The signature of what was read, not of what was stat'ed before: a writer may
            # have replaced the file in between.
            st = os.fstat(f.fileno())
            raw = f.read()
        data = _parse_keyring(raw, self.path)
        with self._cache_lock:
            self._cached_signature = (st.st_ino, st.st_mtime_ns, st.st_size)
            self._cached_at = time.monotonic()
            self._cached_data = data
        return data

    def _mutate(self, change: Callable[[dict[str, Any]], _T]) -> _T:
        with self._locked():
            with open(self.path, "rb") as f:
                data = _parse_keyring(f.read(), self.path)
            result = change(data)
            self._write(data)
        return result

    def _write(self, data: dict[str, Any]) -> None:
        tmp = self.path.with_name(f".{self.path.name}.{secrets.token_hex(8)}.tmp")
        # Created 0600 before any secret is written to it (umask can only narrow it).
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(json.dumps(data, indent=1, sort_keys=True).encode())
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        fsync_directory(self.path.parent)

    def _enabled_record(self, key_id: str) -> dict[str, Any]:
        return _enabled_record_in(self._read(), key_id)


def _parse_keyring(raw: bytes, path: Path) -> dict[str, Any]:
    try:
        data = json.loads(raw)
    except ValueError:
        raise CryptoError(f"keyring {path} is not valid JSON") from None
    if not isinstance(data, dict) or data.get("format") != _FILE_FORMAT:
        raise CryptoError(f"keyring {path} has an unknown format")
    return data


def _enabled_key_of(data: dict[str, Any], tenant_id: str) -> str | None:
    for key_id, record in data["keys"].items():
        if record["tenant_id"] == tenant_id and record["state"] == _ENABLED:
            return str(key_id)
    return None


def _enabled_record_in(data: dict[str, Any], key_id: str) -> dict[str, Any]:
    record: dict[str, Any] | None = data["keys"].get(key_id)
    if record is None:
        raise KeyUnavailable(f"unknown key {key_id}")
    if record["state"] != _ENABLED:
        raise KeyUnavailable(f"key {key_id} was destroyed at {record.get('destroyed_at')}")
    return record


def _wrap_prefix(key_id: str, version: int) -> bytes:
    encoded = key_id.encode("ascii")
    return _WRAP_MAGIC + struct.pack(">B", len(encoded)) + encoded + struct.pack(">I", version)


def _parse_wrapped(wrapped: bytes) -> _ParsedWrappedKey:
    malformed = DecryptionFailed("wrapped data key is malformed")
    magic_end = len(_WRAP_MAGIC)
    if len(wrapped) < magic_end + 1 or wrapped[:magic_end] != _WRAP_MAGIC:
        raise malformed
    id_len = wrapped[magic_end]
    id_end = magic_end + 1 + id_len
    prefix_end = id_end + 4
    expected = prefix_end + _NONCE_BYTES + DATA_KEY_BYTES + _TAG_BYTES
    if len(wrapped) != expected:
        raise malformed
    try:
        key_id = wrapped[magic_end + 1 : id_end].decode("ascii")
    except UnicodeDecodeError:
        raise malformed from None
    (version,) = struct.unpack(">I", wrapped[id_end:prefix_end])
    return _ParsedWrappedKey(
        info=WrappedKeyInfo(key_id=key_id, version=version),
        prefix=wrapped[:prefix_end],
        nonce=wrapped[prefix_end : prefix_end + _NONCE_BYTES],
        ciphertext=wrapped[prefix_end + _NONCE_BYTES :],
    )


def _new_master_key() -> str:
    return base64.b64encode(secrets.token_bytes(_MASTER_KEY_BYTES)).decode()


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
