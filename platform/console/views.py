"""Shaping what the services return into what a page draws: the task timeline (server-side
SVG geometry) and the result document's tables and chart data.

Plain functions of plain data, so that they are testable without a browser. Reads are
scoped like the API's: a job is loaded through ``JobRepository`` with the request's tenant
context before any of its tasks or blobs are read.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

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
    # The task rows as SVG markup, built here rather than in a template loop: for 1,000
    # tasks a Jinja loop took 50-85 ms (75,000 escape calls), this takes a few.
    rows_svg: Markup = field(default_factory=Markup)


def job_tasks(session: Session, ctx: TenantContext, job_id: uuid.UUID) -> tuple[Job, list[Any]]:
    """The tenant's job (404 for another tenant's) and its tasks in stage order."""
    job = JobRepository(session, ctx).get(job_id)
    tasks = repository.timeline_tasks(session, job, MAX_BARS + 1)
    tasks.sort(key=lambda t: STAGE_ORDER.get(t.stage, 9))
    return job, tasks


def human_ms(ms: float | None) -> str:
    if ms is None:
        return "-"
    if ms < 1000:
        return f"{ms:.0f} ms"
    if ms < 120_000:
        return f"{ms / 1000:.1f} s"
    return f"{ms / 60_000:.1f} min"


def _ms(later: datetime, earlier: datetime) -> float:
    return (later - earlier).total_seconds() * 1000


def timeline(job: Job, tasks: Sequence[Any]) -> Timeline:
    """One bar per task (Gantt-style), positioned from the job's start; a row per stage
    above them spans the stage's first start to its last end."""
    origin = job.started_at or job.created_at
    starts = [t.started_at for t in tasks if t.started_at is not None]
    if starts:
        origin = min([origin, *starts])
    now = utcnow()
    ends = [t.finished_at or now for t in tasks if t.started_at is not None]
    end = max([job.finished_at or now, *ends]) if ends or job.finished_at else now
    span_ms = max(_ms(end, origin), 1.0)
    scale = TIMELINE_WIDTH / span_ms

    def bar(
        label: str,
        stage: str,
        state: str,
        start: datetime | None,
        finish: datetime | None,
        y: int,
        attempts: int = 0,
        error: str | None = None,
        duration_ms: float | None = None,
    ) -> Bar:
        if start is None:
            return Bar(label, stage, state, 0, 0, y, "not started", attempts, error)
        stop = finish or now
        length = duration_ms if duration_ms is not None else _ms(stop, start)
        x = _ms(start, origin) * scale
        return Bar(
            label,
            stage,
            state,
            round(x, 1),
            round(max(_ms(stop, start) * scale, 2.0), 1),
            y,
            human_ms(length),
            attempts,
            error,
        )

    stage_rows: list[Bar] = []
    by_stage: dict[str, list[Any]] = {}
    for task in tasks:
        by_stage.setdefault(task.stage.value, []).append(task)
    row = 0
    for stage, members in by_stage.items():
        begun = [t.started_at for t in members if t.started_at is not None]
        finished = [t.finished_at for t in members if t.finished_at is not None]
        running = any(t.finished_at is None and t.started_at is not None for t in members)
        states = {t.state.value for t in members}
        state = (
            "running"
            if running
            else ("failed" if states & {"failed", "timed_out"} else "succeeded")
        )
        stage_rows.append(
            bar(
                f"{stage} ({len(members)} tasks)",
                stage,
                state,
                min(begun) if begun else None,
                None if running or not finished else max(finished),
                row * ROW_HEIGHT,
            )
        )
        row += 1
    bars = []
    shown = tasks[:MAX_BARS]
    for index, task in enumerate(shown):
        label = task.plugin + ("" if task.chunk is None else f" #{task.chunk}")
        bars.append(
            bar(
                label,
                task.stage.value,
                task.state.value,
                task.started_at,
                task.finished_at,
                (row + index) * ROW_HEIGHT,
                task.attempts,
                task.error,
                task.duration_ms,
            )
        )
    ticks = [(round(TIMELINE_WIDTH * i / 4, 1), human_ms(span_ms * i / 4)) for i in range(5)]
    return Timeline(
        bars=bars,
        stages=stage_rows,
        height=(row + len(shown)) * ROW_HEIGHT + 24,
        span=human_ms(span_ms),
        ticks=ticks,
        hidden=max(0, len(tasks) - MAX_BARS),
        rows_svg=_rows_svg(bars),
    )


def _rows_svg(bars: Sequence[Bar]) -> Markup:
    """One ``<g>`` per task: its label, its bar (with a tooltip) and its duration."""
    left = LABEL_WIDTH
    parts = []
    for b in bars:
        label = escape(b.label)
        tip = f"{b.stage} {b.label}: {b.state}, {b.duration}"
        if b.attempts > 1:
            tip += f", {b.attempts} attempts"
        if b.error:
            tip += f": {b.error}"
        note = (
            b.duration
            + (f", {b.attempts} attempts" if b.attempts > 1 else "")
            + (f" {b.state}" if b.state in ("failed", "timed_out") else "")
        )
        parts.append(
            f'<g class="task-row" data-state="{b.state}"><text class="label" x="{left - 6}" '
            f'y="{b.y + 12}" text-anchor="end">{label}</text><rect class="task-bar '
            f'bar-{b.state}" x="{left + b.x}" y="{b.y + 3}" width="{b.width}" height="12">'
            f'<title>{escape(tip)}</title></rect><text class="axis" '
            f'x="{left + b.x + b.width + 4}" y="{b.y + 12}">{escape(note)}</text></g>'
        )
    return Markup("".join(parts))  # noqa: S704 (every text above is escaped)


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


def rerun_payload(ctx: TenantContext, job: Job) -> payload.Payload:
    """The records of ``job`` as stored (every chunk), for a re-run."""
    chunks = int((job.checkpoints or {}).get("payload", {}).get("chunks", 0))
    blobs = tenant_blobs()
    lines: list[bytes] = []
    for index in range(chunks):
        raw = blobs.get(str(ctx.tenant_id), payload.chunk_key(job.payload_key, index))
        lines += [line for line in raw.splitlines() if line.strip()]
    return payload.Payload(lines)


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
