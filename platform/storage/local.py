"""The embedded mode's blob store: one file per key under a root directory.

Only a key's first two segments are folders (``tenants/<tenant_id>/``); the rest of the key
is the file name, with ``/`` written as ``+`` (a character no key segment may contain, so
the mapping is one to one). A job's blobs therefore live in its tenant's folder, not in
folders of their own: creating a folder measured 150 us of kernel time on the machines this
runs on, which made two or three new folders per job the largest cost of accepting one.
Removing a tenant is removing its folder; removing a deeper prefix (one job) scans the
tenant's folder.

A blob is written to ``<root>/.staging/`` and moved into place with ``os.replace``, so a
reader sees the old blob or the whole new one, never a partial file, and a failed write
leaves nothing behind. The staging folder is on the same filesystem as the blobs (a rename
cannot cross filesystems) and no key can name it, since key segments cannot start with a
dot. ``fsync`` is off by default: the embedded mode favours speed, and a blob lost in a
power cut is reported as missing, not served half-written.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

from celeriac.platform.files import fsync_directory
from celeriac.platform.storage.blobs import BlobNotFound, validate_key, validate_prefix

DEFAULT_CHUNK_BYTES = 1 << 20
_STAGING = ".staging"
_STALE_STAGING_SECONDS = 24 * 3600
_FOLDER_DEPTH = 2  # tenants/<tenant_id>/
_FLAT = "+"  # stands for "/" in file names below that depth


class LocalBlobStore:
    """:class:`~celeriac.platform.storage.blobs.BlobStore` on a local directory."""

    def __init__(
        self, root: Path, *, fsync: bool = False, chunk_bytes: int = DEFAULT_CHUNK_BYTES
    ) -> None:
        if chunk_bytes <= 0:
            raise ValueError("chunk_bytes must be positive")
        self.root = Path(root)
        self.fsync = fsync
        self.chunk_bytes = chunk_bytes
        self._staging = self.root / _STAGING
        self._staging.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._remove_stale_staging_files()

    def put(self, key: str, data: bytes | Iterable[bytes]) -> int:
        """Write the blob atomically; returns the bytes written."""
        destination = self._path(key)
        chunks: Iterable[bytes] = (
            [bytes(data)] if isinstance(data, bytes | bytearray | memoryview) else data
        )
        staged = self._staging / secrets.token_hex(16)
        written = 0
        try:
            with open(staged, "xb") as f:
                for chunk in chunks:
                    written += f.write(chunk)
                if self.fsync:
                    f.flush()
                    os.fsync(f.fileno())
            self._move_into_place(staged, destination, key)
        except BaseException:
            staged.unlink(missing_ok=True)
            raise
        if self.fsync:
            fsync_directory(destination.parent)
        return written

    def get(self, key: str) -> bytes:
        """The whole blob."""
        with self._open(key) as f:
            return f.read()

    def stream(self, key: str, chunk_bytes: int | None = None) -> Iterator[bytes]:
        """The blob in chunks of at most ``chunk_bytes`` (default: the store's)."""
        return _FileChunks(self._open(key), chunk_bytes or self.chunk_bytes)

    def exists(self, key: str) -> bool:
        """Whether the blob exists."""
        return self._path(key).is_file()

    def delete(self, key: str) -> None:
        """Remove the blob if present, and any folders it leaves empty."""
        path = self._path(key)
        with contextlib.suppress(FileNotFoundError, IsADirectoryError, NotADirectoryError):
            path.unlink()
            self._prune_empty_parents(path.parent)

    def delete_prefix(self, prefix: str) -> int:
        """Remove every blob under ``prefix``; returns how many were removed."""
        segments = validate_prefix(prefix)[:-1].split("/")
        if len(segments) > _FOLDER_DEPTH:
            return self._delete_files_starting_with(segments)
        top = self.root.joinpath(*segments)
        if not top.is_dir():
            return 0
        removed = 0
        for folder, subfolders, files in os.walk(top, topdown=False):
            for name in files:
                with contextlib.suppress(FileNotFoundError):  # a concurrent delete won
                    os.unlink(os.path.join(folder, name))
                    removed += 1
            for name in subfolders:
                with contextlib.suppress(OSError):  # a concurrent put may be filling it
                    os.rmdir(os.path.join(folder, name))
        self._prune_empty_parents(top)
        return removed

    def size(self, key: str) -> int:
        """The blob's size in bytes."""
        path = self._path(key)
        try:
            st = path.stat()
        except (FileNotFoundError, NotADirectoryError):
            raise BlobNotFound(key) from None
        if not path.is_file():
            raise BlobNotFound(key)
        return st.st_size

    # -- internals -----------------------------------------------------------------

    def _path(self, key: str) -> Path:
        segments = validate_key(key).split("/")
        folders = min(_FOLDER_DEPTH, len(segments) - 1)
        return self.root.joinpath(*segments[:folders], _FLAT.join(segments[folders:]))

    def _delete_files_starting_with(self, segments: list[str]) -> int:
        folder = self.root.joinpath(*segments[:_FOLDER_DEPTH])
        start = _FLAT.join(segments[_FOLDER_DEPTH:]) + _FLAT
        removed = 0
        try:
            entries = list(os.scandir(folder))
        except (FileNotFoundError, NotADirectoryError):
            return 0
        for entry in entries:
            if entry.name.startswith(start):
                with contextlib.suppress(FileNotFoundError):  # a concurrent delete won
                    os.unlink(entry.path)
                    removed += 1
        if removed:
            self._prune_empty_parents(folder)
        return removed

    def _open(self, key: str) -> BinaryIO:
        try:
            return open(self._path(key), "rb")  # the caller closes it
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise BlobNotFound(key) from None

    def _move_into_place(self, staged: Path, destination: Path, key: str) -> None:
        # Two tries: a concurrent delete may remove the (empty) parent folder between
        # creating it and the rename.
        for attempt in range(2):
            try:
                destination.parent.mkdir(parents=True, exist_ok=True)
                os.replace(staged, destination)
                return
            except FileNotFoundError:
                if attempt == 1 or not staged.exists():
                    raise
            except (IsADirectoryError, NotADirectoryError, FileExistsError):
                raise ValueError(
                    f"blob key {key!r} clashes with an existing blob or prefix"
                ) from None

    def _prune_empty_parents(self, folder: Path) -> None:
        while folder != self.root and self.root in folder.parents:
            try:
                folder.rmdir()
            except OSError:  # not empty (or already gone): stop there
                return
            folder = folder.parent

    def _remove_stale_staging_files(self) -> None:
        """Remove what writers that crashed left behind (older than a day, so that no
        other process's write in progress is touched)."""
        cutoff = time.time() - _STALE_STAGING_SECONDS
        for entry in os.scandir(self._staging):
            with contextlib.suppress(OSError):
                if entry.stat().st_mtime < cutoff:
                    os.unlink(entry.path)


class _FileChunks(Iterator[bytes]):
    """Reads an open file in chunks and closes it at the end, on error, or on close()."""

    def __init__(self, file: BinaryIO, chunk_bytes: int) -> None:
        self._file = file
        self._chunk_bytes = chunk_bytes

    def __iter__(self) -> _FileChunks:
        return self

    def __next__(self) -> bytes:
        if self._file.closed:
            raise StopIteration
        try:
            chunk = self._file.read(self._chunk_bytes)
        except BaseException:
            self._file.close()
            raise
        if not chunk:
            self._file.close()
            raise StopIteration
        return chunk

    def close(self) -> None:
        """Release the file without reading the rest."""
        self._file.close()

    def __enter__(self) -> _FileChunks:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
