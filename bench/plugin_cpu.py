"""The plugin CPU of one small job, in one process: this tree's plugins against the same
plugins as a git revision has them (default ``main``), interleaved, same run.

Run from the repository root::

    .venv/bin/python -m bench.plugin_cpu [--baseline main] [--jobs 40] [--rounds 5]

A small job is bench/latency's: 100 records (the first 100 of tests/data/sample_1000.ndjson)
through ``tabular`` and ``timeseries`` (timestamp_field=timestamp), then ``summary`` and
``anomalies`` on both datasets. One job here is what its compute tasks run of plugin code,
with the Parquet round trip the platform makes between them and the JSON of the records and
of the results: per dataset, the records parsed from JSON, ``generate`` and the partial
written as Parquet; per analysis, the partial read back, ``combine`` and ``analyze`` and
the result as JSON. No platform, no database, no I/O.

The baseline's plugin modules (``tabular``, ``timeseries``, ``summary``, ``anomalies``) are
read with ``git show REV:path`` and loaded under other module names, so both versions run
in this one process on the same pandas. CPU is ``time.process_time`` (holds under load, as
wall time does not); the machine's load average is printed beside it. Rounds alternate the
two versions, and each round runs ``--jobs`` jobs of each; the table has the median and the
spread over rounds of the CPU per job, per step and in total.
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import pandas as pd

from bench.kit.cli import run_main
from bench.kit.env import sample_records
from bench.kit.report import summary
from celeriac.workers.compute.plugin import Analyzer, DatasetGenerator, json_safe

ROOT = Path(__file__).resolve().parent.parent
PLUGINS = ("tabular", "timeseries", "summary", "anomalies")
DATASETS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("tabular", {}),
    ("timeseries", {"timestamp_field": "timestamp"}),
)
ANALYZERS = ("summary", "anomalies")
RECORDS = 100
TARGET_MS = 30.0  # issue 16: 60 small jobs/s on two compute processes needs this


def _module(prefix: str, name: str, source: str) -> ModuleType:
    """``source`` loaded as the module ``prefix.name`` (imports of sibling plugins
    rewritten to the same prefix, so that a baseline uses its own ``tabular``)."""
    for sibling in PLUGINS:
        source = source.replace(
            f"celeriac.workers.compute.plugins.{sibling}", f"{prefix}.{sibling}"
        )
    spec = importlib.util.spec_from_loader(f"{prefix}.{name}", loader=None)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    exec(compile(source, f"{prefix}/{name}.py", "exec"), module.__dict__)
    return module


def plugins_at(revision: str | None) -> dict[str, Any]:
    """The plugin instances of this tree (``None``) or of a git revision."""
    prefix = "plugins_" + (revision or "tree").replace("/", "_").replace("-", "_")
    if prefix not in sys.modules:
        package = ModuleType(prefix)
        package.__path__ = []
        sys.modules[prefix] = package
    found: dict[str, Any] = {}
    for name in PLUGINS:
        path = f"workers/compute/plugins/{name}.py"
        if revision is None:
            source = (ROOT / path).read_text()
        else:
            source = subprocess.run(
                ["git", "show", f"{revision}:{path}"],
                cwd=ROOT,
                check=True,
                capture_output=True,
                text=True,
            ).stdout
        found[name] = getattr(_module(prefix, name, source), name)
    for plugin in found.values():
        plugin.ensure_loaded()
    return found


def _parquet(frame: pd.DataFrame) -> bytes:
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    return buffer.getvalue()


def one_job(plugins: dict[str, Any], raw: bytes) -> dict[str, float]:
    """The CPU seconds of each plugin step of one small job."""
    steps: dict[str, float] = {}
    partials: dict[str, bytes] = {}
    for name, params in DATASETS:
        started = time.process_time()
        generator: DatasetGenerator[Any] = plugins[name]
        frame = generator.generate(json.loads(raw), generator.parse_params(params))
        partials[name] = _parquet(frame)
        steps[f"generate {name}"] = time.process_time() - started
    for analyzer_name in ANALYZERS:
        for name, params in DATASETS:
            started = time.process_time()
            generator = plugins[name]
            analyzer: Analyzer[Any] = plugins[analyzer_name]
            partial = pd.read_parquet(io.BytesIO(partials[name]))
            dataset = generator.combine([partial], generator.parse_params(params))
            result = analyzer.analyze(dataset, analyzer.parse_params(None))
            json.dumps(json_safe(result), allow_nan=False)
            steps[f"{analyzer_name} on {name}"] = time.process_time() - started
    return steps


def check_equal(ours: dict[str, Any], theirs: dict[str, Any], raw: bytes) -> None:
    """Both versions give the same datasets and the same results on the bench's job."""
    for name, params in DATASETS:
        made = []
        for plugins in (ours, theirs):
            generator = plugins[name]
            parsed = generator.parse_params(params)
            partial = pd.read_parquet(
                io.BytesIO(_parquet(generator.generate(json.loads(raw), parsed)))
            )
            made.append(generator.combine([partial], parsed))
        pd.testing.assert_frame_equal(made[0], made[1])
        for analyzer in ANALYZERS:
            results = [
                json.dumps(json_safe(p[analyzer].analyze(made[0], p[analyzer].parse_params(None))))
                for p in (ours, theirs)
            ]
            if results[0] != results[1]:
                a, b = (json.loads(r) for r in results)
                if not _close(a, b):
                    raise SystemExit(f"{analyzer} on {name}: results differ")


def _close(a: Any, b: Any) -> bool:
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) and isinstance(b, float):
        return abs(a - b) <= 1e-12 * max(abs(a), abs(b))
    return bool(a == b)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--baseline", default="main", help="git revision (default main)")
    parser.add_argument("--jobs", type=int, default=40, help="jobs per version per round")
    parser.add_argument("--rounds", type=int, default=5)
    return parser.parse_args()


def run(args: argparse.Namespace) -> bool:
    """Print the table; True when this tree's plugin CPU per job is under the target."""

    raw = json.dumps(sample_records()[:RECORDS]).encode()
    versions: dict[str, dict[str, Any]] = {
        f"baseline ({args.baseline})": plugins_at(args.baseline),
        "this tree": plugins_at(None),
    }
    check_equal(versions["this tree"], versions[f"baseline ({args.baseline})"], raw)
    for plugins in versions.values():  # warm-up: imports, caches, first-call costs
        for _ in range(5):
            one_job(plugins, raw)
    per_round: dict[str, list[dict[str, float]]] = {label: [] for label in versions}
    load_before = os.getloadavg()[0]
    for _ in range(args.rounds):
        for label, plugins in versions.items():
            totals: dict[str, float] = {}
            for _ in range(args.jobs):
                for step, seconds in one_job(plugins, raw).items():
                    totals[step] = totals.get(step, 0.0) + seconds
            per_round[label].append({k: v / args.jobs for k, v in totals.items()})
    load_after = os.getloadavg()[0]

    labels = list(versions)
    steps = list(per_round[labels[0]][0])
    print(
        f"\nplugin CPU of one small job ({RECORDS} records, 2 datasets x 2 analyzers), "
        f"ms per job, median of {args.rounds} rounds x {args.jobs} jobs "
        f"[min-max over rounds]; load average {load_before:.1f} -> {load_after:.1f}\n"
    )
    width = max(len(s) for s in [*steps, "total"]) + 2
    print(f"{'step':<{width}}" + "".join(f"{label:>28}" for label in labels) + f"{'ratio':>8}")
    ours = 0.0
    for step in [*steps, "total"]:
        cells = []
        medians = []
        for label in labels:
            values = [
                1000 * (sum(r.values()) if step == "total" else r[step]) for r in per_round[label]
            ]
            medians.append(statistics.median(values))
            cells.append(f"{medians[-1]:8.2f} [{min(values):6.2f}-{max(values):6.2f}]")
        ratio = medians[1] / medians[0] if medians[0] else float("nan")
        print(f"{step:<{width}}" + "".join(f"{c:>28}" for c in cells) + f"{ratio:8.2f}")
        ours = medians[1]
    met = ours < TARGET_MS
    base = 1000 * statistics.median(sum(r.values()) for r in per_round[labels[0]])
    summary(
        "plugin_cpu",
        "plugin CPU per small job",
        ours,
        "ms",
        baseline=f"{labels[0]} {base:.1f} ms",
        ratio=ours / base if base else None,
        target=f"< {TARGET_MS:.0f} ms",
        met=met,
    )
    print(
        f"\ntarget: plugin CPU per small job under {TARGET_MS:.0f} ms: "
        f"{ours:.1f} ms, {'met' if met else 'NOT met'}"
    )
    return met


if __name__ == "__main__":
    run_main(
        "plugin_cpu",
        parse_args,
        run,
        (subprocess.CalledProcessError, OSError),
        "nothing to clean up",
    )
