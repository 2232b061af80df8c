"""Local sinks for the observability tests: Sentry envelopes and OTLP spans sent by the
real SDKs' transports to HTTP servers on 127.0.0.1 (worker_support.Receiver)."""

from __future__ import annotations

import gzip
import json
import socket
import zlib
from dataclasses import dataclass
from typing import Any

import httpx
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from prometheus_client.parser import text_string_to_metric_families

from worker_support import Received, Receiver


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def sentry_dsn(sink: Receiver) -> str:
    return f"http://public@127.0.0.1:{sink.server.server_address[1]}/1"


def otlp_endpoint(sink: Receiver) -> str:
    return f"http://127.0.0.1:{sink.server.server_address[1]}/v1/traces"


def _body(received: Received) -> bytes:
    encoding = {k.lower(): v for k, v in received.headers.items()}.get("content-encoding", "")
    if encoding == "gzip":
        return gzip.decompress(received.body)
    if encoding == "deflate":
        return zlib.decompress(received.body)
    return received.body


def raw_envelopes(sink: Receiver) -> list[bytes]:
    """Every envelope body the sink received, decompressed."""
    return [_body(r) for r in list(sink.received)]


def sentry_events(sink: Receiver) -> list[dict[str, Any]]:
    """The error events (item type ``event``) in the envelopes received."""
    return sentry_items(sink, "event")


def sentry_items(sink: Receiver, item_type: str) -> list[dict[str, Any]]:
    """The envelope items of ``item_type`` (``event``, ``check_in``...) received."""
    events = []
    for body in raw_envelopes(sink):
        lines = body.split(b"\n")
        index = 1
        while index + 1 < len(lines):
            header = json.loads(lines[index]) if lines[index].strip() else {}
            payload = lines[index + 1]
            if header.get("type") == item_type:
                events.append(json.loads(payload))
            index += 2
    return events


@dataclass(frozen=True)
class Span:
    name: str
    trace_id: str
    span_id: str
    parent_id: str
    service: str
    kind: int


def spans(sink: Receiver) -> list[Span]:
    """Spans from the OTLP/HTTP (protobuf) export requests received."""
    found = []
    for received in list(sink.received):
        request = ExportTraceServiceRequest()
        request.ParseFromString(_body(received))
        for resource_spans in request.resource_spans:
            service = next(
                (
                    a.value.string_value
                    for a in resource_spans.resource.attributes
                    if a.key == "service.name"
                ),
                "",
            )
            for scope in resource_spans.scope_spans:
                for span in scope.spans:
                    found.append(
                        Span(
                            span.name,
                            span.trace_id.hex(),
                            span.span_id.hex(),
                            span.parent_span_id.hex(),
                            service,
                            span.kind,
                        )
                    )
    return found


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """One Prometheus scrape, as {(sample name, sorted labels): value}."""
    text = httpx.get(url, timeout=10).text
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def total(
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str
) -> float:
    """The sum of ``name``'s samples whose labels include ``labels``."""
    return sum(
        value
        for (sample, sample_labels), value in samples.items()
        if sample == name and set(labels.items()) <= set(sample_labels)
    )
