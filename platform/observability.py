"""Process start-up shared by every Celeriac process: logging, Sentry and OpenTelemetry.

:func:`init_process` runs in every process that runs code, never only in a parent that
forks or spawns: the API's app factory (each of uvicorn's ``--workers`` children builds
the app), the Celery worker's main process (``setup_logging``) and each prefork child
(``worker_process_init``), and beat. See docs/adr/0013-observability.md.

Sentry must not carry anything a tenant sent: request bodies are never read
(``max_request_body_size="never"``), frames carry no local variables, and
:func:`scrub_event` strips what remains (exception messages, log arguments, headers,
cookies, query strings, task arguments) from every event before it leaves.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import sentry_sdk

from celeriac.platform.logging import configure_logging, current_context
from celeriac.platform.settings import Settings
from celeriac.platform.version import VERSION

logger = logging.getLogger(__name__)

# Tags every event carries when the context knows them; ids only.
EVENT_TAGS = ("tenant_id", "job_id", "task_id", "task", "request_id")
REDACTED = "[redacted]"
# Request headers an event may keep (the others may carry credentials or tenant data).
_SAFE_HEADERS = frozenset({"user-agent", "content-type", "content-length", "x-request-id"})


def release() -> str:
    """Sentry's release name: ``celeriac@<version>`` (the installed version)."""
    return f"celeriac@{VERSION}"


def init_process(settings: Settings, component: str, *, pool: str | None = None) -> None:
    """Configure JSON logging, Sentry (when a DSN is set) and tracing (when an OTLP
    endpoint is set) for ``component`` (api, worker, beat)."""
    configure_logging(settings.log.level, settings.log.json_lines)
    init_sentry(settings, component, pool=pool)
    # Imported here: OpenTelemetry loads only when tracing is on.
    from celeriac.platform.tracing import init_tracing  # noqa: PLC0415

    init_tracing(settings, component if pool is None else f"worker-{pool}")


def init_sentry(settings: Settings, component: str, *, pool: str | None = None) -> None:
    if settings.sentry_dsn is None:
        return
    # Imported here: Sentry's integrations load only with a DSN.
    from sentry_sdk.integrations.celery import CeleryIntegration  # noqa: PLC0415
    from sentry_sdk.integrations.fastapi import FastApiIntegration  # noqa: PLC0415
    from sentry_sdk.integrations.logging import LoggingIntegration  # noqa: PLC0415
    from sentry_sdk.integrations.starlette import StarletteIntegration  # noqa: PLC0415

    obs = settings.observability
    sentry_sdk.init(
        dsn=settings.sentry_dsn.get_secret_value(),
        environment=settings.environment,
        release=release(),
        sample_rate=obs.sentry_sample_rate,
        traces_sample_rate=obs.sentry_traces_sample_rate,
        send_default_pii=False,
        include_local_variables=False,
        max_request_body_size="never",
        before_send=scrub_event,  # type: ignore[arg-type]
        before_breadcrumb=scrub_breadcrumb,
        integrations=[
            StarletteIntegration(),
            FastApiIntegration(),
            # Cron monitors for beat's periodic tasks (check-ins from the workers).
            CeleryIntegration(monitor_beat_tasks=True),
            LoggingIntegration(level=logging.INFO, event_level=logging.ERROR),
        ],
    )
    sentry_sdk.set_tag("component", component)
    # Which process of the component (uvicorn's --workers, prefork children) sent it: the
    # global scope, so events from any thread of this process carry it.
    sentry_sdk.get_global_scope().set_context("process", {"pid": os.getpid()})
    if pool is not None:
        sentry_sdk.set_tag("pool", pool)


def _scrub_exception(exception: dict[str, Any]) -> None:
    # The message may quote a record's value (pandas: 'Unable to parse string "..."'):
    # the type and the stack trace say where; the value stays with the tenant.
    if exception.get("value"):
        exception["value"] = REDACTED
    for frame in (exception.get("stacktrace") or {}).get("frames", []):
        frame.pop("vars", None)


# ARG001: sentry's before_send signature
def scrub_event(event: dict[str, Any], hint: dict[str, Any] | None = None) -> dict[str, Any]:  # noqa: ARG001
    """``before_send``: keep what locates an error (types, stack frames, ids, tags), drop
    what may hold tenant data (exception messages, log arguments, bodies, headers other
    than a few, query strings, cookies, extras, task arguments). Adds the context's ids
    as tags."""
    for exception in (event.get("exception") or {}).get("values", []):
        _scrub_exception(exception)
    for thread in (event.get("threads") or {}).get("values", []):
        for frame in (thread.get("stacktrace") or {}).get("frames", []):
            frame.pop("vars", None)
    _scrub_log_message(event)
    _scrub_request(event)
    extra = event.get("extra")
    if isinstance(extra, dict):
        job = extra.get("celery-job")
        event["extra"] = (
            {"celery-job": {"task_name": job.get("task_name")}} if isinstance(job, dict) else {}
        )
    event.pop("user", None)
    breadcrumbs = event.get("breadcrumbs")
    if isinstance(breadcrumbs, dict):
        for crumb in breadcrumbs.get("values", []):
            crumb.pop("data", None)
    tags = event.setdefault("tags", {})
    for name, value in current_context().items():
        if name in EVENT_TAGS:
            tags.setdefault(name, value)
    return event


def _scrub_log_message(event: dict[str, Any]) -> None:
    logentry = event.get("logentry")
    if isinstance(logentry, dict):
        # The template is ours; the arguments may be anyone's.
        logentry.pop("params", None)
        logentry["formatted"] = logentry.get("message", "")
    if isinstance(event.get("message"), str) and logentry:
        event["message"] = logentry.get("message", "")


def _scrub_request(event: dict[str, Any]) -> None:
    request = event.get("request")
    if isinstance(request, dict):
        for key in ("data", "cookies", "query_string", "env"):
            request.pop(key, None)
        headers = request.get("headers")
        if isinstance(headers, dict):
            request["headers"] = {k: v for k, v in headers.items() if k.lower() in _SAFE_HEADERS}


def scrub_breadcrumb(crumb: dict[str, Any], hint: dict[str, Any] | None) -> dict[str, Any]:
    """``before_breadcrumb``: a log breadcrumb keeps its template, not its arguments."""
    record = (hint or {}).get("log_record")
    if isinstance(record, logging.LogRecord):
        crumb["message"] = str(record.msg)
    crumb.pop("data", None)
    return crumb
