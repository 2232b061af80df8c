"""OpenTelemetry traces: one trace per job, from ``POST /v1/jobs`` to the last webhook.

The libraries do the work. In the API, FastAPI's own telemetry (``FastAPI(telemetry=...)``,
:func:`fastapi_telemetry`) makes one server span per request; in the workers, Celery's
instrumentation makes a span per publish and per task run and carries the W3C trace
context in the message headers, so a task published while another runs is that task's
child. The API makes no publish spans: it writes the context of the request (or of the
submission it publishes, see below) into each message's headers (:func:`_inject`), so a
job's ``start_job`` run is a child of its ``POST /v1/jobs`` span. Measured in
``bench/ingest --observability`` (ADR 0013, revision of 2026-12-06): a span costs the API
about 0.1 ms of CPU to make and export, as much as 4% of a small submission, and the
publish span said nothing the request span and the task's run span do not.

The ingest path publishes jobs in batches from the writer thread, not from the request,
so each submission keeps its request's context and :func:`publishing_in` names it for
that job's ``start_job``.

Off unless ``observability.otlp_endpoint`` is set (then OTLP over HTTP, batched).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from celery import signals
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace

from celeriac.platform.settings import Settings
from celeriac.platform.version import VERSION

if TYPE_CHECKING:  # workers import this module and never FastAPI
    from fastapi.telemetry import TelemetryConfig

_state_lock = threading.Lock()
_provider: Any = None
# True in the API: publishes carry the caller's context in their headers, without a span.
_inject_only = False
# Task id -> the context its message should carry (ingest's writer thread).
_carried: dict[str, otel_context.Context] = {}
_attached: dict[str, object] = {}
# What FastAPI's telemetry leaves out: probes and scrapes are not worth a trace.
UNTRACED_PATHS = frozenset({"/healthz", "/readyz", "/metrics", "/metrics/backlog"})


def enabled() -> bool:
    return _provider is not None


def tracer_provider() -> Any:
    return _provider


def init_tracing(settings: Settings, service: str) -> None:
    """Install the tracer provider once per process tree (a prefork child inherits it: the
    SDK restarts its export thread after a fork), and in a worker Celery's
    instrumentation; the API (``service == "api"``) injects contexts instead."""
    global _provider, _inject_only  # noqa: PLW0603 - one provider per process, set once
    obs = settings.observability
    if obs.otlp_endpoint is None:
        return
    with _state_lock:
        if _provider is not None:
            return
        # Imported here: OpenTelemetry's SDK loads only when tracing is on.
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter  # noqa: PLC0415
        from opentelemetry.instrumentation.celery import CeleryInstrumentor  # noqa: PLC0415
        from opentelemetry.sdk.resources import Resource  # noqa: PLC0415
        from opentelemetry.sdk.trace import TracerProvider  # noqa: PLC0415
        from opentelemetry.sdk.trace.export import BatchSpanProcessor  # noqa: PLC0415
        from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased  # noqa: PLC0415

        provider = TracerProvider(
            resource=Resource.create(
                {
                    "service.name": f"celeriac-{service}",
                    "service.version": VERSION,
                    "deployment.environment": settings.environment,
                }
            ),
            sampler=ParentBased(TraceIdRatioBased(obs.trace_sample_ratio)),
        )
        provider.add_span_processor(
            BatchSpanProcessor(
                OTLPSpanExporter(endpoint=obs.otlp_endpoint),
                schedule_delay_millis=obs.trace_export_delay_ms,
            )
        )
        trace.set_tracer_provider(provider)
        if service == "api":
            _inject_only = True
        else:
            CeleryInstrumentor().instrument(tracer_provider=provider)  # type: ignore[no-untyped-call]
        _provider = provider


def _untraced(scope: Any) -> bool:
    return scope.get("path") in UNTRACED_PATHS


def fastapi_telemetry(*, traced: bool = True) -> TelemetryConfig:
    """``FastAPI(telemetry=...)``: one server span per request while tracing is on, and
    nothing else ever. FastAPI (0.162 and later) otherwise turns its telemetry on by itself
    once any tracer provider is global, with a span per dependency resolution, endpoint and
    serialization (three more spans per request, each about 0.1 ms of CPU) and, with
    ``logs``, exception messages, which may quote what a tenant sent (nothing of it may
    leave, docs/adr/0013). Its HTTP metrics stay off: Prometheus has them
    (``celeriac_http_requests_total``). ``traced=False``: no telemetry at all (the ops
    port's backlog, scraped every few seconds)."""
    return {
        "tracer_provider": _provider,
        "tracing": traced and _provider is not None,
        "metrics": False,
        "logs": False,
        "operation_spans": False,
        "exclude": _untraced,
    }


def flush(timeout_millis: int = 5000) -> None:
    if _provider is not None:
        _provider.force_flush(timeout_millis)


def current_context() -> otel_context.Context | None:
    """The caller's trace context, to publish under later (None while tracing is off)."""
    return otel_context.get_current() if _provider is not None else None


@contextmanager
def publishing_in(contexts: dict[str, otel_context.Context | None]) -> Iterator[None]:
    """While the block publishes, each task id in ``contexts`` is published as a child of
    its context (the ingest writer publishes many requests' jobs in one batch)."""
    carried = {k: v for k, v in contexts.items() if v is not None}
    _carried.update(carried)
    try:
        yield
    finally:
        for task_id in carried:
            _carried.pop(task_id, None)


def _task_id(headers: Any) -> str | None:
    return headers.get("id") if isinstance(headers, dict) else None


# Connected at import, so before Celery's instrumentation connects its own receivers:
# the carried context is current when the instrumentation starts the publish span.
@signals.before_task_publish.connect
def _attach_carried(headers: Any = None, **_: Any) -> None:
    task_id = _task_id(headers)
    carried = _carried.get(task_id) if task_id is not None else None
    if _inject_only:
        _inject(headers, carried)
    elif carried is not None and task_id is not None:
        _attached[task_id] = otel_context.attach(carried)


def _inject(headers: Any, context: otel_context.Context | None) -> None:
    """The API's publish: the message carries ``context`` (the submission's) or the
    current one as W3C headers, which Celery's instrumentation in the worker reads as the
    parent of the task's run span (what it would have written itself after its span)."""
    if isinstance(headers, dict):
        propagate.inject(headers, context=context)


@signals.after_task_publish.connect
def _detach_carried(headers: Any = None, **_: Any) -> None:
    task_id = _task_id(headers)
    token = _attached.pop(task_id, None) if task_id is not None else None
    if token is not None:
        otel_context.detach(token)  # type: ignore[arg-type]
