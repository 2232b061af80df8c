"""The production blob store: one S3 object per key, through boto3.

Keys are the object keys, unchanged (``tenants/<tenant>/jobs/<job>/...``), validated as
for every backend. What S3 gives and how each operation maps:

* ``put`` of bytes is one ``PutObject``. A chunk iterable goes through boto3's managed
  transfer (``upload_fileobj``) with a file-like wrapper over the iterator: s3transfer
  reads it part by part, uploads the parts (a multipart upload once the object passes the
  threshold), completes the upload only at the end of the iterator, and aborts it if the
  iterator raises. So the object appears whole or not at all, memory stays at a few parts,
  and no multipart bookkeeping is written here.
* ``get`` and ``stream``: ``GetObject``; ``stream`` sends it at the call (a missing key
  raises :class:`BlobNotFound` there) and yields the body's ``iter_chunks``.
* ``delete_prefix``: the ``ListObjectsV2`` paginator, deleting each page of at most 1,000
  keys with one ``DeleteObjects`` (S3's batch limit).
* Optional SSE-KMS with the tenant's own key (``blob.s3_sse=tenant_key``): every object
  under ``tenants/<tenant>/`` is written with ``ServerSideEncryption=aws:kms`` and the key
  that ``sse_kms_key_for(tenant)`` names; others keep the bucket's default encryption. This
  is a second layer: the content is already an envelope under the tenant's data key.

With bucket versioning on (terraform/s3.tf), a delete leaves a non-current version that
the bucket's lifecycle expires later; its content is an envelope under the tenant key,
which tenant deletion destroys, so it is unreadable meanwhile.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import IO, TYPE_CHECKING, Any, cast

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import ClientError

from celeriac.platform.storage.blobs import BlobNotFound, validate_key, validate_prefix

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_s3.type_defs import ObjectIdentifierTypeDef

    from celeriac.platform.settings import Settings

DEFAULT_CHUNK_BYTES = 1 << 20
DEFAULT_PART_BYTES = 8 << 20  # S3's minimum part is 5 MiB
DELETE_BATCH = 1000  # DeleteObjects takes at most 1,000 keys
_MISSING = {"NoSuchKey", "404", "NotFound"}


class S3BlobStore:
    """:class:`~celeriac.platform.storage.blobs.BlobStore` on one S3 bucket."""

    def __init__(
        self,
        client: S3Client,
        bucket: str,
        *,
        sse_kms_key_for: Callable[[str], str] | None = None,
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
        part_bytes: int = DEFAULT_PART_BYTES,
        max_concurrency: int = 4,
    ) -> None:
        if chunk_bytes <= 0:
            raise ValueError("chunk_bytes must be positive")
        if part_bytes < 5 << 20:
            raise ValueError("part_bytes must be at least 5 MiB (S3's minimum part size)")
        self.client = client
        self.bucket = bucket
        self.chunk_bytes = chunk_bytes
        self.sse_kms_key_for = sse_kms_key_for
        self._transfer = TransferConfig(
            multipart_threshold=part_bytes,
            multipart_chunksize=part_bytes,
            max_concurrency=max_concurrency,
            preferred_transfer_client="classic",
        )
        # s3transfer buffers up to this many parts read from a non-seekable source (10 by
        # default): bound it so a streamed upload holds a few parts, not 10.
        self._transfer.max_in_memory_upload_chunks = max_concurrency

    def put(self, key: str, data: bytes | Iterable[bytes]) -> int:
        """Store the object (replacing any); visible only once complete."""
        extra = self._put_args(validate_key(key))
        if isinstance(data, bytes | bytearray | memoryview):
            body = bytes(data)
            self.client.put_object(Bucket=self.bucket, Key=key, Body=body, **extra)
            return len(body)
        reader = _ChunkReader(data)
        # Typed as IO by the stubs; s3transfer needs only read() from a non-seekable source.
        self.client.upload_fileobj(
            cast("IO[bytes]", reader),
            self.bucket,
            key,
            ExtraArgs=dict(extra),
            Config=self._transfer,
        )
        return reader.bytes_read

    def get(self, key: str) -> bytes:
        """The whole object."""
        body = self._get_object(key)["Body"]
        try:
            data: bytes = body.read()
        finally:
            body.close()
        return data

    def stream(self, key: str, chunk_bytes: int | None = None) -> Iterator[bytes]:
        """The object in chunks of at most ``chunk_bytes`` (default: the store's)."""
        return _BodyChunks(self._get_object(key)["Body"], chunk_bytes or self.chunk_bytes)

    def exists(self, key: str) -> bool:
        """Whether the object exists (``HeadObject``)."""
        try:
            self.client.head_object(Bucket=self.bucket, Key=validate_key(key))
        except ClientError as exc:
            if _code(exc) in _MISSING:
                return False
            raise
        return True

    def delete(self, key: str) -> None:
        """``DeleteObject``: a missing object is not an error."""
        self.client.delete_object(Bucket=self.bucket, Key=validate_key(key))

    def delete_prefix(self, prefix: str) -> int:
        """Remove every object under ``prefix``, 1,000 per ``DeleteObjects``."""
        paginator = self.client.get_paginator("list_objects_v2")
        removed = 0
        pages = paginator.paginate(
            Bucket=self.bucket,
            Prefix=validate_prefix(prefix),
            PaginationConfig={"PageSize": DELETE_BATCH},
        )
        for page in pages:
            keys: list[ObjectIdentifierTypeDef] = [
                {"Key": item["Key"]} for item in page.get("Contents", [])
            ]
            for start in range(0, len(keys), DELETE_BATCH):
                batch = keys[start : start + DELETE_BATCH]
                answer = self.client.delete_objects(
                    Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True}
                )
                errors = answer.get("Errors", [])
                if errors:
                    first = errors[0]
                    raise OSError(
                        f"S3 kept {len(errors)} object(s) under {prefix!r}: "
                        f"{first.get('Key')}: {first.get('Code')} {first.get('Message')}"
                    )
                removed += len(batch)
        return removed

    def size(self, key: str) -> int:
        """The object's size (``HeadObject``)."""
        try:
            head = self.client.head_object(Bucket=self.bucket, Key=validate_key(key))
        except ClientError as exc:
            if _code(exc) in _MISSING:
                raise BlobNotFound(key) from None
            raise
        return int(head["ContentLength"])

    # -- internals -----------------------------------------------------------------

    def _get_object(self, key: str) -> Any:
        try:
            return self.client.get_object(Bucket=self.bucket, Key=validate_key(key))
        except ClientError as exc:
            if _code(exc) in _MISSING:
                raise BlobNotFound(key) from None
            raise

    def _put_args(self, key: str) -> dict[str, Any]:
        if self.sse_kms_key_for is None:
            return {}
        segments = key.split("/")
        if len(segments) < 3 or segments[0] != "tenants":
            return {}
        # S3 Bucket Keys (one per KMS key, so that S3 does not call KMS per object) come
        # from the bucket's configuration (terraform/s3.tf: bucket_key_enabled).
        return {"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": self.sse_kms_key_for(segments[1])}


class _ChunkReader:
    """A read-only file over an iterator of chunks, for ``upload_fileobj``.

    It has ``read`` and no ``seek``, so s3transfer treats it as a non-seekable stream and
    reads it one part at a time.
    """

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._chunks = iter(chunks)
        self._buffer = bytearray()
        self.bytes_read = 0

    def read(self, size: int = -1) -> bytes:
        while size < 0 or len(self._buffer) < size:
            try:
                chunk = next(self._chunks)
            except StopIteration:
                break
            self._buffer += chunk
        if size < 0 or size > len(self._buffer):
            size = len(self._buffer)
        out = bytes(self._buffer[:size])
        del self._buffer[:size]
        self.bytes_read += len(out)
        return out


class _BodyChunks(Iterator[bytes]):
    """``iter_chunks`` of a ``GetObject`` body, closing the connection at the end, on
    error, or on ``close()``."""

    def __init__(self, body: Any, chunk_bytes: int) -> None:
        self._body = body
        self._chunks = body.iter_chunks(chunk_bytes)
        self._closed = False

    def __iter__(self) -> _BodyChunks:
        return self

    def __next__(self) -> bytes:
        if self._closed:
            raise StopIteration
        try:
            chunk: bytes = next(self._chunks)
        except StopIteration:
            self.close()
            raise
        except BaseException:
            self.close()
            raise
        return chunk

    def close(self) -> None:
        """Release the connection without reading the rest."""
        if not self._closed:
            self._closed = True
            self._body.close()


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def s3_client(settings: Settings) -> S3Client:
    """A boto3 S3 client for ``settings`` (credentials: boto3's usual chain, e.g. IRSA)."""
    return boto3.client(
        "s3",
        region_name=settings.blob.region,
        endpoint_url=settings.blob.s3_endpoint_url,
        config=Config(
            retries={"mode": "standard", "max_attempts": 5},
            # Path-style only off AWS (moto, MinIO): AWS itself wants virtual hosts.
            s3={"addressing_style": "path" if settings.blob.s3_endpoint_url else "auto"},
            max_pool_connections=50,
        ),
    )
