"""Figures and how they are printed: percentiles, plain-text tables, and the one-line
summaries (``summary: {...}`` on stdout) that ``python -m bench.all`` (``make bench``)
collects into one table."""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from bench.kit.machine import loadavg

SUMMARY_PREFIX = "summary: "


def percentile(values: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default); NaN when empty."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    position = (len(ordered) - 1) * q
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def median(values: Sequence[float]) -> float:
    """The median of the values that are not NaN (NaN when none is)."""
    clean = [v for v in values if not math.isnan(v)]
    return statistics.median(clean) if clean else float("nan")


def table(headers: Sequence[str], rows: Sequence[Sequence[object]], first: int = 14) -> str:
    """Left-aligned first column, right-aligned others; floats with one decimal."""

    def cell(value: object) -> str:
        if isinstance(value, float):
            return "-" if math.isnan(value) else f"{value:.1f}"
        return str(value)

    texts = [[cell(v) for v in row] for row in rows]
    widths = [
        max([len(h), *(len(r[i]) for r in texts)]) + (0 if i == 0 else 2)
        for i, h in enumerate(headers)
    ]
    widths[0] = max(widths[0], first)

    def line(values: Sequence[str]) -> str:
        return values[0].ljust(widths[0]) + "".join(
            v.rjust(w) for v, w in zip(values[1:], widths[1:], strict=True)
        )

    return "\n".join([line(list(headers)), *(line(r) for r in texts)])


@dataclass
class Summary:
    """One headline figure of a bench, against its same-run baseline."""

    bench: str
    measure: str
    value: float
    unit: str
    baseline: str = ""
    ratio: float | None = None
    target: str = ""
    met: bool | None = None
    load: str = ""


def summary(
    bench: str,
    measure: str,
    value: float,
    unit: str,
    *,
    baseline: str = "",
    ratio: float | None = None,
    target: str = "",
    met: bool | None = None,
) -> Summary:
    """Print one summary line (with the load average now) and return it."""
    line = Summary(bench, measure, value, unit, baseline, ratio, target, met, loadavg())
    print(SUMMARY_PREFIX + json.dumps(asdict(line)), flush=True)
    return line


def parse_summaries(output: str) -> list[Summary]:
    found = []
    for text in output.splitlines():
        if text.startswith(SUMMARY_PREFIX):
            found.append(Summary(**json.loads(text.removeprefix(SUMMARY_PREFIX))))
    return found


def summary_table(lines: Sequence[Summary]) -> str:
    def verdict(met: bool | None) -> str:
        return "-" if met is None else ("met" if met else "NOT met")

    rows = [
        (
            s.bench,
            s.measure,
            f"{s.value:.4g} {s.unit}",
            s.baseline or "-",
            "-" if s.ratio is None else f"{s.ratio:.2f}",
            s.target or "-",
            verdict(s.met),
            s.load,
        )
        for s in lines
    ]
    return table(
        ("bench", "measure", "value", "baseline", "ratio", "target", "verdict", "load"), rows
    )
