"""Durable writes to local files, shared by the local keyring and the local blob store."""

from __future__ import annotations

import os
from pathlib import Path


def fsync_directory(path: Path) -> None:
    """Flush the directory ``path`` itself, so that a rename into it survives a crash
    (without it, a crash can bring back the old file or lose the new name)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
