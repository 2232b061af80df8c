"""OpenTelemetry traces: one trace per job, from ``POST /v1/jobs`` to the last webhook.

The libraries' own instrumentations do the work: FastAPI's makes the request span, and
Celery's makes a span per publish and per task run and carries the W3C trace context in
the message headers, so a task published while another runs is that task's child. The
one gap is the API's ingest path: jobs are published in batches from the writer thread,
not from the request, so each submission keeps its request's context and
:func:`publishing_in` makes it current while that job's ``start_job`` is published.

Off unless ``observability.otlp_endpoint`` is set (then OTLP over HTTP, batched).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from celery import signals
from opentelemetry import context as otel_context
from opentelemetry import trace

from celeriac.platform.settings import Settings
from celeriac.platform.version import VERSION

_state_lock = threading.Lock()
_provider: Any = None
# Task id -> the context its publish span should be a child of (ingest's writer thread).
_carried: dict[str, otel_context.Context] = {}
_attached: dict[str, object] = {}


def enabled() -> bool:
    return _provider is not None


def tracer_provider() -> Any:
    return _provider


def init_tracing(settings: Settings, service: str) -> None:
    """Install the tracer provider and the Celery instrumentation once per process tree
    (a prefork child inherits both: the SDK restarts its export thread after a fork)."""
    global _provider  # noqa: PLW0603 - one provider per process, set once
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
        CeleryInstrumentor().instrument(tracer_provider=provider)  # type: ignore[no-untyped-call]
        _provider = provider


def instrument_app(app: Any) -> None:
    """FastAPI's instrumentation on ``app`` (no-op while tracing is off)."""
    if _provider is None:
        return
    # Imported here: OpenTelemetry's SDK loads only when tracing is on.
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor  # noqa: PLC0415

    # One server span per request: the ASGI instrumentation's per-message receive/send
    # spans would triple the spans of a POST and say nothing the request span does not.
    FastAPIInstrumentor.instrument_app(
        app,
        tracer_provider=_provider,
        excluded_urls="healthz,readyz,metrics",
        exclude_spans=["receive", "send"],
    )


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
    if task_id is not None and task_id in _carried:
        _attached[task_id] = otel_context.attach(_carried[task_id])


@signals.after_task_publish.connect
def _detach_carried(headers: Any = None, **_: Any) -> None:
    task_id = _task_id(headers)
    token = _attached.pop(task_id, None) if task_id is not None else None
    if token is not None:
        otel_context.detach(token)  # type: ignore[arg-type]
