"""Every benchmark with short settings, one after the other, and one summary table of their
headline figures (``make bench``; about 15-25 minutes on the 2-core machine, more when it
is loaded).

    .venv/bin/python -m bench.all [--only latency,throughput] [--skip chaos] [--logs DIR]

Each scenario runs as ``python -m bench.<name>`` with the arguments below (short settings:
the figures are for seeing that nothing broke or moved far, not the ones bench/README.md
quotes, which come from the full settings); its output goes to ``DIR/<name>.log`` and its
``summary: {...}`` lines (:func:`bench.kit.report.summary`) to the table. The exit status
of each is shown beside it: 0 targets met, 1 not met, 2 set-up failed. ``bench.chaos`` is
not run here (``make chaos``: its own PostgreSQL cluster, several minutes per scenario).
Run it under the bench lock (``make bench`` does): two benches must never overlap.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

from bench.kit.cli import run_main
from bench.kit.env import SCRATCH_ROOT
from bench.kit.machine import loadavg
from bench.kit.procs import REPO
from bench.kit.report import Summary, parse_summaries, summary_table, table

SHORT: dict[str, list[str]] = {
    "plugin_cpu": ["--jobs", "10", "--rounds", "2"],
    "latency": ["--jobs", "20", "--warmup", "3", "--block", "10"],
    "throughput": ["--jobs", "40", "--rounds", "1", "--warmup", "5"],
    "bigjob": ["--sizes", "10000,100000", "--runs", "1"],
    "ingest": ["--seconds", "3", "--warmup", "100", "--rounds", "1"],
    "usage": ["--seconds", "3", "--warmup", "100", "--rounds", "1", "--rows", "100000"],
    "fairness": ["--cases", "a", "--backlog", "300", "--quiet", "20"],
    "tenants": ["--tenants", "10,1000", "--rounds", "1", "--drain-seconds", "5"],
    "crypto": ["--records", "10000", "--runs", "1"],
    "webhooks": ["--events", "100", "--jobs", "5"],
    "probes": ["--runs", "3"],
    "sdk": ["--submissions", "30", "--rounds", "1", "--streams", "20", "--ingest-seconds", "3"],
    "console": ["--jobs", "5000", "--tasks", "200", "--requests", "30"],
}
TIMEOUT_SECONDS = 1800


def _parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--only", default="", help="comma-separated scenario names")
    parser.add_argument("--skip", default="", help="comma-separated scenario names")
    parser.add_argument("--logs", type=Path, default=SCRATCH_ROOT / "all", metavar="DIR")
    args = parser.parse_args()
    names = [n for n in args.only.split(",") if n] or list(SHORT)
    unknown = set(names) - set(SHORT)
    if unknown:
        parser.error(f"unknown scenarios {sorted(unknown)}; known: {', '.join(SHORT)}")
    args.names = [n for n in names if n not in set(args.skip.split(","))]
    return args


def run(args: argparse.Namespace) -> bool:
    args.logs.mkdir(parents=True, exist_ok=True)
    lines: list[Summary] = []
    statuses = []
    for name in args.names:
        log = args.logs / f"{name}.log"
        started = time.monotonic()
        print(f"bench.{name} {' '.join(SHORT[name])} ... (log {log})", flush=True)
        with log.open("w") as out:
            try:
                done = subprocess.run(
                    [sys.executable, "-m", f"bench.{name}", *SHORT[name]],
                    cwd=REPO,
                    stdout=subprocess.PIPE,
                    stderr=out,
                    text=True,
                    timeout=TIMEOUT_SECONDS,
                    check=False,
                )
                status, stdout = str(done.returncode), done.stdout
            except subprocess.TimeoutExpired as exc:
                status = "timeout"
                stdout = exc.stdout if isinstance(exc.stdout, str) else ""
            out.write(stdout)
        found = parse_summaries(stdout)
        lines += found
        statuses.append((name, status, time.monotonic() - started, len(found)))
    print(f"\nsummary (short settings; load average now {loadavg()}):\n")
    print(summary_table(lines))
    print()
    print(table(("scenario", "exit", "seconds", "figures"), statuses))
    return all(status in ("0", "1") for _, status, _, _ in statuses)


if __name__ == "__main__":
    run_main("all", _parse_args, run)
