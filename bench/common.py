"""Small pieces every benchmark uses (run as ``python bench/<name>.py``, so siblings import
by module name)."""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import redis

# Scratch space for var directories (blobs, keyring, SQLite): the repository's var/, where
# `celeriac up` keeps its own. Not the system's temporary directory: on the machines this
# project runs on, creating a file in /tmp measured 220-870 us against 22-33 us under the
# work tree, on the same ext4 device, which made the filesystem the benchmark's bottleneck.
SCRATCH_ROOT = Path(__file__).resolve().parent.parent / "var" / "bench"


def scratch_dir(prefix: str, root: Path | None = None) -> Path:
    """A new empty directory for one benchmark run (the caller removes it)."""
    base = root or SCRATCH_ROOT
    base.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=prefix, dir=base))


def percentile(values: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    position = (len(ordered) - 1) * q
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def flush_redis(server: str, dbs: Sequence[int]) -> None:
    """Empty the benchmark's own Redis dbs."""
    for db in dbs:
        client = redis.Redis.from_url(f"{server}/{db}", socket_connect_timeout=5)
        try:
            client.flushdb()
        finally:
            client.close()


def run_main(
    name: str,
    parse_args: Callable[[], Any],
    run: Callable[[Any], bool],
    errors: tuple[type[BaseException], ...],
    on_interrupt: str,
) -> None:
    """Exit 0 when the targets are met, 1 when not, 2 on a set-up error, 130 on Ctrl-C."""
    args = parse_args()
    try:
        ok = run(args)
    except errors as exc:
        print(f"bench/{name}: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print(f"bench/{name}: interrupted; {on_interrupt}", file=sys.stderr)
        sys.exit(130)
    sys.exit(0 if ok else 1)


# The bench tenant's quota overrides: limits so high that none refuses a request, so a
# bench measures the platform with its quota checks (they still run: one Redis round trip
# per request), not the plan's limits.
UNLIMITED_QUOTAS = (
    "requests_per_second=2000000000",
    "request_burst=2000000000",
    "max_running_jobs=2000000000",
    "jobs_per_month=2000000000",
    "max_payload_bytes=2000000000",
    "max_records_per_job=2000000000",
    "max_webhook_targets=2000000000",
)
