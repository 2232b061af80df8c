"""Small pieces every benchmark uses (run as ``python bench/<name>.py``, so siblings import
by module name)."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import Any

import redis


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
    name: str, parse_args: Callable[[], Any], run: Callable[[Any], bool],
    errors: tuple[type[BaseException], ...], on_interrupt: str,
) -> None:  # fmt: skip
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
