"""A generation counter that tells every API process to drop its auth cache.

Revoking a key, suspending or deleting a tenant bumps it; each process reads it at most
every ``api.auth_cache_poll_seconds`` (default 1 s) and clears its cache when it moved.
Polling one small value is used instead of pub/sub because a missed message cannot leave
a process with a stale cache: the worst case is one poll interval.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Protocol

import redis


class Generation(Protocol):
    def current(self) -> int: ...

    def bump(self) -> None: ...


class RedisGeneration:
    """Shared by every API process through Redis."""

    def __init__(self, client: redis.Redis, key: str = "celeriac:auth:generation") -> None:
        self.client, self.key = client, key

    def current(self) -> int:
        value = self.client.get(self.key)
        return int(value) if value is not None else 0

    def bump(self) -> None:
        self.client.incr(self.key)


class FileGeneration:
    """The embedded mode's equivalent: every process runs on one machine and shares var/."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def current(self) -> int:
        try:
            return self.path.stat().st_mtime_ns
        except FileNotFoundError:
            return 0

    def bump(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.touch()
        # mtime granularity can be coarse; make sure the value moves.
        now = time.time_ns()
        os.utime(self.path, ns=(now, max(now, self.current() + 1)))
