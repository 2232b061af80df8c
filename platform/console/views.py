"""Shaping what the services return into what a page draws: the task timeline (server-side
SVG geometry) and the result document's tables and chart data.

Plain functions of plain data, so that they are testable without a browser. Reads are
scoped like the API's: a job is loaded through ``JobRepository`` with the request's tenant
context before any of its tasks or blobs are read.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from cachetools import LRUCache
from markupsafe import Markup, escape
from sqlalchemy.orm import Session

from celeriac.platform.auth.context import TenantContext
from celeriac.platform.jobs import payload, repository
from celeriac.platform.jobs.repository import JobRepository
from celeriac.platform.models import Job, JobStage, utcnow
from celeriac.platform.storage import BlobNotFound
from celeriac.platform.tenant_data import tenant_blobs

TIMELINE_WIDTH = 760  # px of the time axis
LABEL_WIDTH = 200
ROW_HEIGHT = 18
BAR_HEIGHT = 12
# Bars beyond this many are summarised (a row per stage still shows the whole job).
MAX_BARS = 2000
# Points of the series drawn under the anomalies (the first chunk of the payload).
MAX_SERIES_POINTS = 2000
STAGE_ORDER = {JobStage.DATASETS: 0, JobStage.ANALYSIS: 1, JobStage.FINALIZE: 2}


@dataclass
class Bar:
    label: str
    stage: str
    state: str
    x: float
    width: float
    y: int
    duration: str
    attempts: int
    error: str | None


@dataclass
class Timeline:
    bars: list[Bar]
    stages: list[Bar]
    height: int
    span: str
    ticks: list[tuple[float, str]]
    hidden: int = 0
    width: int = TIMELINE_WIDTH
    label_width: int = LABEL_WIDTH
    # The task rows as SVG markup (see _rows_svg); ``drawn`` of them.
    rows_svg: Markup = field(default_factory=Markup)
    drawn: int = 0


def job_tasks(session: Session, ctx: TenantContext, job_id: uuid.UUID) -> tuple[Job, list[Any]]:
    """The tenant's job (404 for another tenant's) and its tasks in stage order."""
    job = JobRepository(session, ctx).get(job_id)
    return job, tasks_of(session, job)


def tasks_of(session: Session, job: Job) -> list[Any]:
    """The tasks of ``job`` (read through the tenant's repository) in stage order."""
    tasks = repository.timeline_tasks(session, job, MAX_BARS + 1)
    tasks.sort(key=lambda t: STAGE_ORDER.get(t[0], 9))
    return tasks


@dataclass(frozen=True)
class FinishedView:
    """What a finished job's page draws from its tasks and stored blobs."""

    timeline: Timeline
    results: ResultView | None
    results_error: str | None


# A finished job's tasks, results and records no longer change, so what its page draws
# from them (for 1,000 tasks: the timeline, two decryptions, 2,000 records parsed; most
# of the page's server time) is kept, per API process, for the pages read most recently.
# The key holds the tenant, so a hit is only possible after the tenant-scoped read of the
# job, and what deletion changes (data_deleted_at, result_key): a job whose data was
# deleted is drawn anew. Bounded in entries (a 2,000-task timeline is about 0.7 MB).
_finished: LRUCache[tuple[Any, ...], FinishedView] = LRUCache(maxsize=32)
_finished_lock = threading.Lock()


def finished_key(job: Job) -> tuple[Any, ...] | None:
    """The cache key of a finished job's view (None while the job runs)."""
    if job.finished_at is None:
        return None
    return (job.tenant_id, job.id, job.finished_at, job.data_deleted_at, job.result_key)


def cached_finished(key: tuple[Any, ...] | None) -> FinishedView | None:
    if key is None:
        return None
    with _finished_lock:
        return _finished.get(key)


def keep_finished(key: tuple[Any, ...] | None, view: FinishedView) -> None:
    if key is not None:
        with _finished_lock:
            _finished[key] = view


@lru_cache(maxsize=4096)
def human_ms(ms: float | None) -> str:
    if ms is None:
        return "-"
    if ms < 1000:
        return f"{ms:.0f} ms"
    if ms < 120_000:
        return f"{ms / 1000:.1f} s"
    return f"{ms / 60_000:.1f} min"


@lru_cache(maxsize=1024)
def _text(value: str) -> str:
    """``value`` escaped for SVG text (labels repeat: one plugin name per many tasks)."""
    return str(escape(value))


def timeline(job: Job, tasks: Sequence[Any]) -> Timeline:
    """One bar per task (Gantt-style), positioned from the job's start; a row per stage
    above them spans the stage's first start to its last end.

    Drawn on every read of a job's page, so it is one pass over plain tuples with times
    as epoch seconds: for 1,000 tasks, SQLAlchemy ``Row`` attribute reads, a dataclass
    per bar and datetime arithmetic took about 60% of the page's server time."""
    rows = [tuple(t) for t in tasks]  # stage, plugin, chunk, state, attempts, start, end,
    #                                    duration_ms, error (repository.timeline_tasks)
    now = utcnow().timestamp()
    origin = (job.started_at or job.created_at).timestamp()
    end = job.finished_at.timestamp() if job.finished_at else now
    times: list[tuple[float | None, float | None]] = []
    for row in rows:
        started = row[5].timestamp() if row[5] is not None else None
        finished = row[6].timestamp() if row[6] is not None else None
        times.append((started, finished))
        if started is not None:
            origin = min(origin, started)
            stop = finished if finished is not None else now
            end = max(end, stop)
    span_ms = max((end - origin) * 1000, 1.0)
    scale = TIMELINE_WIDTH * 1000 / span_ms  # px per second

    def geometry(start: float, stop: float) -> tuple[float, float]:
        return round((start - origin) * scale, 1), round(max((stop - start) * scale, 2.0), 1)

    # A row per stage, in the order of the tasks (already sorted by stage).
    stages: dict[str, list[Any]] = {}
    for row, (started, finished) in zip(rows, times, strict=True):
        entry = stages.setdefault(row[0].value, [None, None, False, set(), 0])
        entry[4] += 1
        entry[3].add(row[3].value)
        if started is not None:
            entry[0] = started if entry[0] is None else min(entry[0], started)
            if finished is None:
                entry[2] = True
        if finished is not None:
            entry[1] = finished if entry[1] is None else max(entry[1], finished)
    stage_rows = []
    for index, (stage, (first, last, running, states, count)) in enumerate(stages.items()):
        state = (
            "running"
            if running
            else ("failed" if states & {"failed", "timed_out"} else "succeeded")
        )
        label = f"{stage} ({count} tasks)"
        y = index * ROW_HEIGHT
        if first is None:
            stage_rows.append(Bar(label, stage, state, 0, 0, y, "not started", 0, None))
            continue
        stop = now if running or last is None else last
        x, width = geometry(first, stop)
        duration = human_ms(round((stop - first) * 1000))
        stage_rows.append(Bar(label, stage, state, x, width, y, duration, 0, None))
    shown = rows[:MAX_BARS]
    first_y = len(stage_rows) * ROW_HEIGHT
    ticks = [(round(TIMELINE_WIDTH * i / 4, 1), human_ms(span_ms * i / 4)) for i in range(5)]
    return Timeline(
        # The template asks only whether there are bars; they are drawn by rows_svg.
        bars=[],
        stages=stage_rows,
        height=first_y + len(shown) * ROW_HEIGHT + 24,
        span=human_ms(span_ms),
        ticks=ticks,
        hidden=max(0, len(rows) - MAX_BARS),
        rows_svg=_rows_svg(shown, times, first_y, now, geometry),
        drawn=len(shown),
    )


def _rows_svg(
    rows: Sequence[tuple[Any, ...]],
    times: Sequence[tuple[float | None, float | None]],
    first_y: int,
    now: float,
    geometry: Any,
) -> Markup:
    """One ``<g>`` per task: its label, its bar (with a tooltip) and its duration; built
    here rather than in a template loop (for 1,000 tasks a Jinja loop took 50-85 ms)."""
    left = LABEL_WIDTH
    parts = []
    for index, row in enumerate(rows):
        stage, plugin, chunk, state_, attempts, _, _, duration_ms, error = row
        state = state_._value_  # not .value: Enum's property costs a call per read
        started, finished = times[index]
        label = _text(plugin if chunk is None else f"{plugin} #{chunk}")
        y = first_y + index * ROW_HEIGHT
        if started is None:
            x, width, duration = 0.0, 0.0, "not started"
        else:
            stop = finished if finished is not None else now
            x, width = geometry(started, stop)
            length = duration_ms if duration_ms is not None else round((stop - started) * 1000)
            duration = human_ms(length)
        note = duration
        tip = f"{stage._value_} {label}: {state}, {duration}"
        if attempts > 1:
            note += f", {attempts} attempts"
            tip += f", {attempts} attempts"
        if error:
            tip += f": {escape(error)}"
        if state in ("failed", "timed_out"):
            note += f" {state}"
        parts.append(
            f'<g class="task-row" data-state="{state}"><text class="label" x="{left - 6}" '
            f'y="{y + 12}" text-anchor="end">{label}</text><rect class="task-bar '
            f'bar-{state}" x="{left + x}" y="{y + 3}" width="{width}" height="12">'
            f'<title>{tip}</title></rect><text class="axis" '
            f'x="{left + x + width + 4}" y="{y + 12}">{note}</text></g>'
        )
    return Markup("".join(parts))  # noqa: S704 (label and error are escaped; the rest ours)


# --- results ---------------------------------------------------------------------------


@dataclass
class ResultView:
    summaries: list[dict[str, Any]] = field(default_factory=list)
    anomalies: list[dict[str, Any]] = field(default_factory=list)
    sentiment: list[dict[str, Any]] = field(default_factory=list)
    keywords: list[dict[str, Any]] = field(default_factory=list)
    other: list[dict[str, Any]] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)


def _flat_value(record: dict[str, Any], column: str) -> float | None:
    """``order.amount`` of a record, as the tabular dataset flattens it (json_normalize)."""
    value: Any = record
    if column in record:
        value = record[column]
    else:
        for part in column.split("."):
            if not isinstance(value, dict) or part not in value:
                return None
            value = value[part]
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    try:
        return float(value)
    except ValueError:
        return None


def first_records(ctx: TenantContext, job: Job) -> list[dict[str, Any]]:
    """The job's first records, up to ``MAX_SERIES_POINTS`` (drawn under the anomalies),
    read chunk by chunk from the stored payload."""
    chunks = int((job.checkpoints or {}).get("payload", {}).get("chunks", 1))
    found: list[dict[str, Any]] = []
    for index in range(chunks):
        try:
            raw = tenant_blobs().get(str(ctx.tenant_id), payload.chunk_key(job.payload_key, index))
        except BlobNotFound:
            break
        found += payload.records(raw)
        if len(found) >= MAX_SERIES_POINTS:
            break
    return found[:MAX_SERIES_POINTS]


def results_view(document: dict[str, Any], records: list[dict[str, Any]]) -> ResultView:
    """The result document as tables and chart data (charts are drawn in the browser by
    uPlot from the JSON this returns, or as server-side SVG bars)."""
    view = ResultView(errors=list(document.get("errors") or []))
    for analyzer, per_dataset in (document.get("analyses") or {}).items():
        for dataset, result in per_dataset.items():
            if not isinstance(result, dict):
                continue
            if analyzer == "summary":
                view.summaries.append(_summary(dataset, result))
            elif analyzer == "anomalies":
                view.anomalies += _anomalies(dataset, result, records)
            elif analyzer == "sentiment":
                view.sentiment.append(_sentiment(dataset, result))
            elif analyzer == "keywords":
                view.keywords.append(_keywords(dataset, result))
            else:
                text = json.dumps(result, indent=1, default=str)
                view.other.append(
                    {
                        "analyzer": analyzer,
                        "dataset": dataset,
                        "json": text[:4000],
                        "truncated": len(text) > 4000,
                    }
                )
    return view


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "-" if value is None else str(value)


def _summary(dataset: str, result: dict[str, Any]) -> dict[str, Any]:
    numeric = result.get("numeric") or {}
    stats = ["count", "mean", "std", "min", "p25", "p50", "p75", "max", "nulls"]
    present = [s for s in stats if any(s in (v or {}) for v in numeric.values())]
    rows = [
        [column, *[_fmt((values or {}).get(s)) for s in present]]
        for column, values in numeric.items()
    ]
    other = [
        [column, *[f"{k}: {_fmt(v)}" for k, v in list((values or {}).items())[:4]]]
        for column, values in (result.get("other") or {}).items()
    ]
    return {
        "dataset": dataset,
        "rows": result.get("rows"),
        "stats": present,
        "numeric": rows,
        "other": other,
    }


def _anomalies(
    dataset: str, result: dict[str, Any], records: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    charts = []
    columns = result.get("columns") or {}
    if result.get("method") == "isolation_forest":
        columns = {
            "rows": {"indexes": result.get("indexes") or [], "scores": result.get("scores") or []}
        }
    found_any = [(c, f) for c, f in columns.items() if int((f or {}).get("count") or 0) > 0]
    ranked = sorted(found_any, key=lambda kv: -int((kv[1] or {}).get("count") or 0))
    for column, found in ranked[:4]:
        indexes = list((found or {}).get("indexes") or [])
        scores = list((found or {}).get("scores") or [])
        series = [_flat_value(r, column) for r in records]
        has_series = any(v is not None for v in series)
        if has_series:
            xs = list(range(len(series)))
            marks: list[float | None] = [None] * len(series)
            for index in indexes:
                if 0 <= index < len(series):
                    marks[index] = series[index]
            data = [xs, series, marks]
            labels = [column, "anomaly"]
        else:  # no values to draw (isolation forest over rows): the scores themselves
            data = [indexes, scores]
            labels = ["score"]
        charts.append(
            {
                "id": f"anomalies-{dataset}-{column}".replace(".", "-"),
                "dataset": dataset,
                "column": column,
                "count": len(indexes),
                "shown_rows": len(records),
                "labels": labels,
                "data": json.dumps(data, separators=(",", ":"), allow_nan=False),
                "top": sorted(zip(indexes, scores, strict=False), key=lambda p: -abs(p[1] or 0))[
                    :10
                ],
            }
        )
    return charts


def _sentiment(dataset: str, result: dict[str, Any]) -> dict[str, Any]:
    documents = int(result.get("documents") or 0)
    shares = []
    for polarity in ("positive", "neutral", "negative"):
        count = int(result.get(polarity) or 0)
        share = count / documents if documents else 0.0
        shares.append(
            {
                "polarity": polarity,
                "count": count,
                "share": f"{share:.0%}",
                "width": round(share * 300, 1),
            }
        )
    return {
        "dataset": dataset,
        "documents": documents,
        "mean": _fmt(result.get("mean_compound")),
        "shares": shares,
    }


def _keywords(dataset: str, result: dict[str, Any]) -> dict[str, Any]:
    terms = [t for t in (result.get("terms") or []) if isinstance(t, dict)][:15]
    top = max([float(t.get("score") or 0) for t in terms] or [1.0]) or 1.0
    rows = [
        {
            "term": t.get("term"),
            "score": _fmt(t.get("score")),
            "width": round(float(t.get("score") or 0) / top * 300, 1),
            "y": i * 22,
        }
        for i, t in enumerate(terms)
    ]
    return {
        "dataset": dataset,
        "documents": result.get("documents"),
        "terms": rows,
        "height": len(rows) * 22,
    }


def rerun_spec(job: Job) -> str | dict[str, Any]:
    """The pipeline a job ran, as a submission names it."""
    pipeline = job.pipeline or {}
    if pipeline.get("name"):
        return str(pipeline["name"])
    return {
        section: [
            {"name": s["name"], "params": s.get("params") or {}} for s in pipeline.get(section, [])
        ]
        for section in ("datasets", "analyzers")
    }
