"""What the machine is doing: its load, CPU seconds per process group (PostgreSQL and Redis
server-wide), peak resident memory per process. Read from /proc, so a figure costs no
process of its own."""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.kit.cli import note
from bench.kit.procs import group_members

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024


def loadavg() -> str:
    """The 1, 5 and 15 minute load averages, as /proc/loadavg says them."""
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of one process (0 when it is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime


def machine_ticks() -> tuple[int, int]:
    """(busy, total) jiffies over all CPUs since boot."""
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    total = sum(fields[:8])  # guest time is already counted in user
    return total - idle, total


def machine_busy_seconds() -> float:
    """CPU seconds all cores spent busy since boot."""
    return machine_ticks()[0] / CLOCK_TICKS


def background_busy(seconds: float = 1.0) -> float:
    """Percent of all cores busy over ``seconds``."""
    busy_before, total_before = machine_ticks()
    time.sleep(seconds)
    busy_after, total_after = machine_ticks()
    total = total_after - total_before
    return 100 * (busy_after - busy_before) / total if total else 0.0


def wait_for_quiet_machine(
    max_seconds: float = 20.0, busy_pct: float = 30.0, window: float = 0.5
) -> float:
    """Wait, up to ``max_seconds``, until the machine is less than ``busy_pct`` busy (in %
    of one core) over ``window`` seconds; returns the last reading. Only lowers the odds of
    a noisy run: load can come back."""
    deadline = time.monotonic() + max_seconds
    while True:
        before = machine_busy_seconds()
        time.sleep(window)
        busy = 100 * (machine_busy_seconds() - before) / window
        if busy < busy_pct or time.monotonic() > deadline:
            if busy >= busy_pct:
                note(f"  the machine is {busy:.0f}% busy (of one core) before this run")
            return busy


def _stats() -> list[tuple[int, str, int, float]]:
    """(pid, command name, process group, CPU seconds with reaped children) of every
    process: the postmaster's share carries the time of PostgreSQL backends that exited."""
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as f:
                raw = f.read()
        except OSError:  # gone meanwhile
            continue
        name = raw[raw.index("(") + 1 : raw.rindex(")")]
        rest = raw[raw.rindex(")") + 2 :].split()
        # rest[0] is field 3 (state): pgrp is field 5; utime, stime, cutime, cstime 14-17.
        ticks = sum(int(v) for v in rest[11:15])
        found.append((int(entry.name), name, int(rest[2]), ticks / CLOCK_TICKS))
    return found


def group_cpu_seconds(groups: dict[int, str]) -> dict[str, float]:
    """CPU seconds (user + system, reaped children included) per named process group, plus
    ``postgres`` and ``redis`` (server-wide: other users of those servers count too)."""
    cpu: dict[str, float] = {}
    for _pid, name, pgrp, seconds in _stats():
        if pgrp in groups:
            key = groups[pgrp]
        elif name == "postgres":
            key = "postgres"
        elif name == "redis-server":
            key = "redis"
        else:
            continue
        cpu[key] = cpu.get(key, 0.0) + seconds
    return cpu


@dataclass
class CpuMeter:
    """Accumulates CPU seconds per process group (and the machine's busy seconds) over
    the phases it is used for (``with meter: ...``); this process counts as ``bench``."""

    groups: dict[int, str]
    totals: dict[str, float] = field(default_factory=dict)
    wall: float = 0.0
    _start: tuple[float, dict[str, float], float, float] | None = None

    def __enter__(self) -> CpuMeter:
        own = os.times()
        self._start = (
            time.monotonic(),
            group_cpu_seconds(self.groups),
            machine_busy_seconds(),
            own.user + own.system,
        )
        return self

    def __exit__(self, *_: object) -> None:
        assert self._start is not None
        at, before, busy, own_before = self._start
        after = group_cpu_seconds(self.groups)
        own = os.times()
        for key, value in after.items():
            self.totals[key] = self.totals.get(key, 0.0) + value - before.get(key, 0.0)
        self.totals["bench"] = self.totals.get("bench", 0.0) + own.user + own.system - own_before
        self.totals["machine"] = self.totals.get("machine", 0.0) + machine_busy_seconds() - busy
        self.wall += time.monotonic() - at
        self._start = None

    def others(self) -> float:
        """Busy CPU seconds no measured group accounts for: other people's processes."""
        ours = sum(v for k, v in self.totals.items() if k != "machine")
        return max(0.0, self.totals.get("machine", 0.0) - ours)


# --- memory -------------------------------------------------------------------------------


def _status_kib(pid: int, key: str) -> int:
    with contextlib.suppress(OSError, ValueError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def reset_peak_rss(pgids: list[int]) -> None:
    """Start every process of these groups on a new peak (``clear_refs`` 5, Linux >= 4.0:
    VmHWM is set back to the current RSS)."""
    for pgid in pgids:
        for pid in group_members(pgid):
            with contextlib.suppress(OSError), open(f"/proc/{pid}/clear_refs", "w") as f:
                f.write("5")


def peak_rss_mib(pgid: int) -> dict[int, float]:
    """Peak resident memory (VmHWM, MiB) of every live process of group ``pgid``."""
    return {pid: _status_kib(pid, "VmHWM") / 1024 for pid in group_members(pgid)}


def postgres_peak_rss_mib() -> float:
    """The largest peak RSS of any live PostgreSQL process (server-wide)."""
    peak = 0.0
    for pid, name, _pgrp, _cpu in _stats():
        if name == "postgres":
            peak = max(peak, _status_kib(pid, "VmHWM") / 1024)
    return peak
