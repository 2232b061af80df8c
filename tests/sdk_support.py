"""Shared by the SDK and CLI tests (tests/client/)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import httpx

from celeriac.platform.settings import Settings

from support import celeriac_env
from worker_support import Workers

ALL_SCOPES = ["jobs:write", "jobs:read", "webhooks:manage", "keys:manage", "usage:read"]


@dataclass
class LivePlatform:
    """The API's base URL and the processes behind it."""

    url: str
    processes: Workers

    def log(self, name: str) -> str:
        return self.processes.log(name)


def platform_env(api_settings: Settings, var_dir: Path) -> dict[str, str]:
    """The environment of the live platform's processes (the test's database and Redis)."""
    env = celeriac_env(
        var_dir,
        database_url=api_settings.database_url,
        broker_url=api_settings.broker_url,
        redis_url=str(api_settings.redis_url),
    )
    env["CELERIAC_WEBHOOKS__ALLOW_HTTP"] = "true"
    env["CELERIAC_WEBHOOKS__ALLOWED_CIDRS"] = '["127.0.0.0/8", "::1/128"]'
    env["CELERIAC_API__AUTH_CACHE_POLL_SECONDS"] = "0.2"
    env["CELERIAC_API__QUOTA_CACHE_POLL_SECONDS"] = "0.2"
    return env


def healthy(url: str) -> bool:
    """Whether the API at ``url`` answers /healthz."""
    try:
        return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False
