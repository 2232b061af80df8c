"""The blob store interface, its errors, and the key layout every backend shares.

Keys are S3-style: ``/``-separated segments, no leading or trailing slash. They are
validated identically for every backend, so a key that works on a laptop works on S3 and
no key can climb out of the local root: each segment uses only ``[A-Za-z0-9._-]``, does not
start with a dot (which also rules out ``.`` and ``..``, and keeps dot-names free for the
store's own use), and the whole key is at most 1024 bytes (S3's limit).

Layout: everything a tenant owns is under ``tenants/<tenant_id>/``, so deleting a tenant is
one ``delete_prefix``; a job's blobs are under ``tenants/<tenant_id>/jobs/<job_id>/``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from typing import Protocol, runtime_checkable

MAX_KEY_BYTES = 1024
_SEGMENT = r"[A-Za-z0-9_-][A-Za-z0-9._-]*"
_SEGMENT_RE = re.compile(_SEGMENT)
_KEY_RE = re.compile(rf"{_SEGMENT}(?:/{_SEGMENT})*")


class BlobNotFound(LookupError):
    """No blob is stored under the key."""

    def __init__(self, key: str) -> None:
        super().__init__(f"no blob at {key!r}")
        self.key = key


@runtime_checkable
class BlobStore(Protocol):
    """Byte objects by key: a local directory now, S3 later.

    ``put`` takes bytes or an iterable of chunks (S3: a multipart upload of buffered
    parts) and makes the object visible only once it is complete. ``stream`` opens the
    object at once (so a missing key raises :class:`BlobNotFound` from the call, not from
    the first ``next``) and yields it in chunks (S3: ``GetObject`` body ``iter_chunks``).
    """

    def put(self, key: str, data: bytes | Iterable[bytes]) -> int:
        """Store ``data`` under ``key``, replacing any blob there; returns bytes written."""
        ...

    def get(self, key: str) -> bytes:
        """The whole blob."""
        ...

    def stream(self, key: str) -> Iterator[bytes]:
        """The blob in chunks of bounded size."""
        ...

    def exists(self, key: str) -> bool:
        """Whether a blob is stored under ``key``."""
        ...

    def delete(self, key: str) -> None:
        """Remove the blob; a missing one is not an error (as S3's ``DeleteObject``)."""
        ...

    def delete_prefix(self, prefix: str) -> int:
        """Remove every blob under ``prefix`` (which ends with ``/``); returns how many."""
        ...

    def size(self, key: str) -> int:
        """The blob's size in bytes."""
        ...


def validate_key(key: str) -> str:
    """Return ``key`` if it is a valid blob key, else raise ``ValueError``."""
    if not isinstance(key, str) or not _KEY_RE.fullmatch(key):
        raise ValueError(
            f"invalid blob key {key!r}: '/'-separated segments of [A-Za-z0-9._-], "
            "none empty or starting with '.'"
        )
    if len(key.encode()) > MAX_KEY_BYTES:
        raise ValueError(f"blob key longer than {MAX_KEY_BYTES} bytes")
    return key


def validate_prefix(prefix: str) -> str:
    """Return ``prefix`` if it is a valid key followed by ``/``, else raise ``ValueError``.

    The trailing slash is required so that ``tenants/1/`` cannot match ``tenants/10/...``.
    """
    if not isinstance(prefix, str) or not prefix.endswith("/"):
        raise ValueError(f"invalid blob prefix {prefix!r}: must end with '/'")
    validate_key(prefix[:-1])
    return prefix


def _segment(name: str, value: str) -> str:
    if not isinstance(value, str) or not _SEGMENT_RE.fullmatch(value):
        raise ValueError(f"invalid {name} {value!r} for a blob key")
    return value


def tenant_prefix(tenant_id: str) -> str:
    """``tenants/<tenant_id>/``: the prefix of everything the tenant owns."""
    return f"tenants/{_segment('tenant id', tenant_id)}/"


def job_blob_key(tenant_id: str, job_id: str, name: str) -> str:
    """``tenants/<tenant_id>/jobs/<job_id>/<name>``; ``name`` may contain ``/``."""
    return validate_key(f"{tenant_prefix(tenant_id)}jobs/{_segment('job id', job_id)}/{name}")


def job_of_key(tenant_id: str, key: str) -> str | None:
    """The job id of a blob under ``tenants/<tenant_id>/jobs/<job_id>/``, else None."""
    head = f"{tenant_prefix(tenant_id)}jobs/"
    if not key.startswith(head):
        return None
    job_id, slash, _ = key[len(head) :].partition("/")
    return job_id if slash and job_id else None
