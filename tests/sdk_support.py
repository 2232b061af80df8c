"""Shared by the SDK and CLI tests (tests/client/)."""

from __future__ import annotations

from dataclasses import dataclass

from worker_support import Workers

ALL_SCOPES = ["jobs:write", "jobs:read", "webhooks:manage", "keys:manage", "usage:read"]


@dataclass
class LivePlatform:
    """The API's base URL and the processes behind it."""

    url: str
    processes: Workers

    def log(self, name: str) -> str:
        return self.processes.log(name)
