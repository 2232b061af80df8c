"""JSON-lines logging with the request/tenant/job/task context attached to every line.

A contextvar carries the context: the API sets ``request_id`` and ``tenant_id`` per
request, Celery's task signals set ``task_id`` and the ids in the task's arguments, and
every log line written meanwhile carries them. Lines written inside an OpenTelemetry span
also carry its ``trace_id`` and ``span_id``.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any

from opentelemetry import trace

CONTEXT_FIELDS = ("request_id", "tenant_id", "job_id", "task_id")

_context: ContextVar[Mapping[str, str]] = ContextVar(
    "celeriac_log_context", default=MappingProxyType({})
)


def current_context() -> Mapping[str, str]:
    return _context.get()


@contextmanager
def log_context(**fields: object) -> Iterator[None]:
    """Attach ``fields`` (None values are skipped) to every log line inside the block."""
    extra = {k: str(v) for k, v in fields.items() if v is not None}
    token = _context.set({**_context.get(), **extra})
    try:
        yield
    finally:
        _context.reset(token)


def bind_context(**fields: object) -> None:
    """Attach ``fields`` until the context is reset (for Celery's pre/post-run signals)."""
    _context.set({**_context.get(), **{k: str(v) for k, v in fields.items() if v is not None}})


def clear_context() -> None:
    _context.set(MappingProxyType({}))


_RESERVED = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


class JsonLinesFormatter(logging.Formatter):
    """One JSON object per line: timestamp, level, logger, message, context, extras.

    Written here rather than taken from python-json-logger: it is twenty lines, and the
    context fields come from our own contextvar, which that library would not know.
    """

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "timestamp": datetime.fromtimestamp(record.created, UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            # Which process wrote it (uvicorn's --workers and Celery's prefork children
            # share one stream).
            "process": record.process,
        }
        line.update(_context.get())
        # The current span's ids (when tracing is on), so a log line leads to its trace.
        span = trace.get_current_span().get_span_context()
        if span.is_valid:
            line["trace_id"] = f"{span.trace_id:032x}"
            line["span_id"] = f"{span.span_id:016x}"
        for key, value in record.__dict__.items():
            if key not in _RESERVED and not key.startswith("_"):
                line[key] = value
        if record.exc_info:
            line["exc_info"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


class HousekeepingAtDebug(logging.Filter):
    """Beat's "Sending due task" lines (the dispatcher's release and the webhook poll run
    every second or so: about 6 lines a second under ``celeriac up``) count as DEBUG."""

    PREFIX = "Scheduler: Sending due task"

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno == logging.INFO and str(record.msg).startswith(self.PREFIX):
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            return logging.getLogger().isEnabledFor(logging.DEBUG)
        return True


def configure_logging(level: str = "INFO", json_lines: bool = True) -> None:
    """Send every logger's output to stderr, as JSON lines unless told otherwise."""
    handler = logging.StreamHandler(sys.stderr)
    if json_lines:
        handler.setFormatter(JsonLinesFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    beat = logging.getLogger("celery.beat")
    beat.filters[:] = [f for f in beat.filters if not isinstance(f, HousekeepingAtDebug)]
    beat.addFilter(HousekeepingAtDebug())
    # Uvicorn installs its own handlers; make it use ours.
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "celery", "alembic"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True


class DemoteHousekeeping(logging.Filter):
    """Writes the lines about ``names`` (periodic housekeeping tasks, every second or so)
    at DEBUG: Celery logs each send, receipt and success at INFO, which at idle buried
    everything else. Records are demoted, not dropped, so DEBUG still shows them."""

    def __init__(self, names: frozenset[str]) -> None:
        super().__init__()
        self.names = names

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno != logging.INFO or not record.name.startswith(("celery", "celeriac")):
            return True
        task = getattr(record, "task", None)
        if task not in self.names:
            message = record.getMessage()
            if not any(name in message for name in self.names):
                return True
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return logging.getLogger().isEnabledFor(logging.DEBUG)


def demote_to_debug(task_names: frozenset[str]) -> None:
    """Install :class:`DemoteHousekeeping` on the handlers :func:`configure_logging` set."""
    for handler in logging.getLogger().handlers:
        handler.addFilter(DemoteHousekeeping(task_names))
