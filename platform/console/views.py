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
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from cachetools import LRUCache
from markupsafe import Markup, escape
from sqlalchemy.orm import Session

from celeriac.platform.auth.context import TenantContext
from celeriac.platform.jobs import payload, repository, service
from celeriac.platform.jobs.repository import JobRepository
from celeriac.platform.jobs.schemas import JobOut, StageProgress, TaskError
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
    return job, tasks_of(session, ctx.tenant_id, job.id)


def tasks_of(session: Session, tenant_id: uuid.UUID, job_id: uuid.UUID) -> list[Any]:
    """The tasks of the tenant's job (``repository.timeline_tasks``, filtered on the
    tenant) in stage order. Call it with a job the tenant-scoped read has returned."""
    tasks = repository.timeline_tasks(session, tenant_id, job_id, MAX_BARS + 1)
    tasks.sort(key=lambda t: STAGE_ORDER.get(t[0], 9))
    return tasks


def detail_of(job: Job, tasks: Sequence[Any]) -> JobOut:
    """What ``service.job_detail`` returns for ``job`` (per-stage progress, failed tasks),
    computed from all of its timeline rows (``tasks_of``; the caller checks that none was
    left out) instead of reading the same tasks twice more: a running job's page is
    re-read on every change. tests/platform/test_console.py holds it to job_detail."""
    out = service.job_summary(job)
    progress: dict[str, StageProgress] = {}
    for (stage, state), count in sorted(Counter((t[0], t[3]) for t in tasks).items()):
        entry = progress.setdefault(stage, StageProgress())
        setattr(entry, state, getattr(entry, state) + count)
        entry.total += count
    failed = [t for t in tasks if t[3] in ("failed", "timed_out")]
    failed.sort(key=lambda t: (t[0], t[1], t[2] is None, t[2] or 0))  # stage, plugin, chunk
    out.progress = progress
    out.errors = [
        TaskError(
            stage=JobStage(t[0]), plugin=t[1], chunk=t[2], state=t[3], error=t[8], attempts=t[4]
        )
        for t in failed[: repository.FAILED_TASKS_SHOWN]
    ]
    return out


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


@lru_cache(maxsize=4096)
def _label(plugin: str, chunk: int | None) -> str:
    """A task's label escaped for SVG text (``plugin #chunk``); the same few thousand
    come back on every re-read of a running job's page."""
    return str(escape(plugin if chunk is None else f"{plugin} #{chunk}"))


def timeline(job: Job, tasks: Sequence[Any]) -> Timeline:
    """One bar per task (Gantt-style), positioned from the job's start; a row per stage
    above them spans the stage's first start to its last end.

    Drawn on every read of a running job's page, so it works on the plain rows of
    ``repository.timeline_tasks`` (stage, plugin, chunk, state, attempts, start, end,
    duration_ms, error; the stage and state as strings, the times as epoch seconds) with
    comprehensions and one pass that writes the markup: for 1,000 tasks, SQLAlchemy
    ``Row`` attribute reads, a dataclass per bar and datetime arithmetic took about 60% of
    the page's server time."""
    rows = tasks
    now = utcnow().timestamp()
    origin = (job.started_at or job.created_at).timestamp()
    end = job.finished_at.timestamp() if job.finished_at else now
    starts = [r[5] for r in rows if r[5] is not None]
    if starts:
        origin = min(origin, *starts)
        end = max(end, *[now if r[6] is None else r[6] for r in rows if r[5] is not None])
    span_ms = max((end - origin) * 1000, 1.0)
    scale = TIMELINE_WIDTH * 1000 / span_ms  # px per second

    # A row per stage, in the order of the tasks (already sorted by stage).
    stages: dict[str, list[Any]] = {}
    for row in rows:
        group = stages.get(row[0])
        if group is None:
            stages[row[0]] = [row]
        else:
            group.append(row)
    stage_rows = []
    for index, (stage, group) in enumerate(stages.items()):
        started = [r[5] for r in group if r[5] is not None]
        finished = [r[6] for r in group if r[6] is not None]
        running = any(r[5] is not None and r[6] is None for r in group)
        states = {r[3] for r in group}
        state = (
            "running"
            if running
            else ("failed" if states & {"failed", "timed_out"} else "succeeded")
        )
        label = f"{stage} ({len(group)} tasks)"
        y = index * ROW_HEIGHT
        if not started:
            stage_rows.append(Bar(label, stage, state, 0, 0, y, "not started", 0, None))
            continue
        first = min(started)
        stop = now if running or not finished else max(finished)
        x = round((first - origin) * scale, 1)
        width = round(max((stop - first) * scale, 2.0), 1)
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
        rows_svg=_rows_svg(shown, first_y, now, origin, scale),
        drawn=len(shown),
    )


def _row_text(
    stage: str,
    plugin: str,
    chunk: int | None,
    state: str,
    attempts: int,
    length_ms: int | None,
    error: str | None,
    y: int,
) -> tuple[str, str, str, str]:
    """The markup of one task's row around its three coordinates (bar start, bar width,
    duration label): label, tooltip and duration (``length_ms``; None: not started)."""
    label = _label(plugin, chunk)
    duration = "not started" if length_ms is None else human_ms(length_ms)
    note = duration
    tip = f"{stage} {label}: {state}, {duration}"
    if attempts > 1:
        note += f", {attempts} attempts"
        tip += f", {attempts} attempts"
    if error:
        tip += f": {escape(error)}"
    if state in ("failed", "timed_out"):
        note += f" {state}"
    return (
        f'<g class="task-row" data-state="{state}"><text class="label" x="{LABEL_WIDTH - 6}" '
        f'y="{y + 12}" text-anchor="end">{label}</text><rect class="task-bar bar-{state}" x="',
        f'" y="{y + 3}" width="',
        f'" height="12"><title>{tip}</title></rect><text class="axis" x="',
        f'" y="{y + 12}">{note}</text></g>',
    )


# The rows of tasks that ended or have not started: the same on every re-read of a running
# job's page but for their coordinates (a pure function of its arguments: the text of a
# row is reused for any page that draws the same row at the same place).
_ended_row_text = lru_cache(maxsize=8192)(_row_text)


def _rows_svg(rows: Sequence[Any], first_y: int, now: float, origin: float, scale: float) -> Markup:
    """One ``<g>`` per task, built here rather than in a template loop (for 1,000 tasks a
    Jinja loop took 50-85 ms): the text of a row that ended comes from
    ``_ended_row_text``, its coordinates are formatted with ``%.1f``."""
    left = LABEL_WIDTH
    parts = []
    y = first_y
    for stage, plugin, chunk, state, attempts, started, finished, duration_ms, error in rows:
        if started is None:
            head, mid, tail, end = _ended_row_text(
                stage, plugin, chunk, state, attempts, None, error, y
            )
            x, width = float(left), 0.0
        else:
            if finished is None:
                stop = now
                length = duration_ms if duration_ms is not None else round((now - started) * 1000)
                text = _row_text
            else:
                stop = finished
                length = (
                    duration_ms if duration_ms is not None else round((finished - started) * 1000)
                )
                text = _ended_row_text
            head, mid, tail, end = text(stage, plugin, chunk, state, attempts, length, error, y)
            x = left + (started - origin) * scale
            width = max((stop - started) * scale, 2.0)
        parts.append(f"{head}{x:.1f}{mid}{width:.1f}{tail}{x + width + 4:.1f}{end}")
        y += ROW_HEIGHT
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
