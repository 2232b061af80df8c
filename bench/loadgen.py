"""The load generator of ``bench/ingest.py``, run as a process of its own.

It keeps ``--concurrency`` requests in flight on keep-alive connections, first for a
warm-up (not measured), then until ``--requests`` have completed or ``--seconds`` have
passed, whichever comes first. It prints ``{"event": "measuring"}`` when the warm-up ends
(with ``--wait-for-go`` it then waits for a line on stdin, so that the caller can read
its counters first) and, at the end, one JSON object: counts by status, the first error
body, latency percentiles and its own CPU time. The body is encoded once, so client-side
JSON work is not measured.

Two clients: ``raw`` (the default) writes a prebuilt HTTP/1.1 request on each of its own
connections and reads the status, headers and body; ``httpx`` is httpx's AsyncClient.
The raw client exists because the machine has two cores shared by the client, the server,
PostgreSQL and Redis: httpx spends about 2 ms of CPU per request, so it saturates a core
near 500 requests/s and would measure itself instead of the echo server.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx

from bench.kit.report import percentile

REQUEST_TIMEOUT_SECONDS = 10.0
MAX_ERROR_TEXT = 2000

# (status, error text or None for a 202)
Outcome = tuple[str, str | None]
Sender = Callable[[], Awaitable[Outcome]]


def job_body(records: int) -> bytes:
    """A small inline job: one dataset step, one analyzer step, ``records`` short records."""
    body = {
        "pipeline": {"datasets": [{"name": "tabular"}], "analyzers": [{"name": "summary"}]},
        "priority": "normal",
        "records": [
            {"id": i, "name": f"item-{i}", "value": round(i * 1.5, 2), "ok": i % 2 == 0}
            for i in range(records)
        ],
    }
    return json.dumps(body, separators=(",", ":")).encode()


class RawConnection:
    """One keep-alive HTTP/1.1 connection sending the same prebuilt request each time."""

    def __init__(self, host: str, port: int, request: bytes) -> None:
        self.host, self.port, self.request = host, port, request
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def send(self) -> Outcome:
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT_SECONDS):
                status, body, keep_alive = await self._exchange()
        except (OSError, asyncio.IncompleteReadError, TimeoutError, ValueError) as exc:
            self.close()
            return type(exc).__name__, f"{type(exc).__name__}: {exc}"
        if not keep_alive:
            self.close()
        if status == 202:
            return "202", None
        return str(status), body.decode("utf-8", "replace")[:MAX_ERROR_TEXT]

    async def _exchange(self) -> tuple[int, bytes, bool]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        self.writer.write(self.request)
        status_line = await self.reader.readuntil(b"\r\n")
        status = int(status_line.split(b" ", 2)[1])
        headers: dict[bytes, bytes] = {}
        while (line := await self.reader.readuntil(b"\r\n")) != b"\r\n":
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
        keep_alive = headers.get(b"connection", b"").lower() != b"close"
        if b"content-length" in headers:
            body = await self.reader.readexactly(int(headers[b"content-length"]))
        elif headers.get(b"transfer-encoding", b"").lower() == b"chunked":
            body = await self._chunked()
        else:
            body, keep_alive = await self.reader.read(), False
        return status, body, keep_alive

    async def _chunked(self) -> bytes:
        assert self.reader is not None
        parts = []
        while size := int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16):
            parts.append(await self.reader.readexactly(size))
            await self.reader.readuntil(b"\r\n")
        while await self.reader.readuntil(b"\r\n") != b"\r\n":  # trailers
            pass
        return b"".join(parts)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


@dataclass
class Phase:
    """What one phase (warm-up or measured) saw."""

    statuses: Counter[str] = field(default_factory=Counter)
    latencies_ms: list[float] = field(default_factory=list)
    first_error: str | None = None
    started: float = 0.0
    finished: float = 0.0


async def _run_phase(senders: list[Sender], *, count: int, seconds: float) -> Phase:
    """Each sender keeps one request in flight until ``count`` were issued or time is up."""
    phase = Phase()
    issued = 0
    deadline = time.monotonic() + seconds

    async def loop(send: Sender) -> None:
        nonlocal issued
        while issued < count and time.monotonic() < deadline:
            issued += 1
            start = time.perf_counter()
            status, error_text = await send()
            elapsed_ms = (time.perf_counter() - start) * 1000
            phase.statuses[status] += 1
            if error_text is None:
                phase.latencies_ms.append(elapsed_ms)
            elif phase.first_error is None:
                phase.first_error = f"{status}: {error_text}"

    phase.started = time.perf_counter()
    await asyncio.gather(*(loop(send) for send in senders))
    phase.finished = time.perf_counter()
    return phase


def _percentile(values: list[float], fraction: float) -> float | None:
    """The kit's percentile, None (JSON null) when nothing was measured."""
    return percentile(values, fraction) if values else None


def _raw_senders(args: argparse.Namespace, body: bytes) -> tuple[list[Sender], Callable[[], None]]:
    url = urlsplit(args.url)
    if url.scheme != "http" or url.hostname is None or url.port is None:
        raise SystemExit("the raw client needs an http://host:port/path URL")
    head = (
        f"POST {url.path or '/'} HTTP/1.1\r\n"
        f"Host: {url.hostname}:{url.port}\r\n"
        f"Authorization: Bearer {args.key}\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n"
        "\r\n"
    )
    request = head.encode("latin-1") + body
    connections = [RawConnection(url.hostname, url.port, request) for _ in range(args.concurrency)]

    def close() -> None:
        for connection in connections:
            connection.close()

    return [c.send for c in connections], close


def _httpx_senders(args: argparse.Namespace, body: bytes) -> tuple[list[Sender], httpx.AsyncClient]:
    limits = httpx.Limits(
        max_connections=args.concurrency, max_keepalive_connections=args.concurrency
    )
    client = httpx.AsyncClient(limits=limits, timeout=httpx.Timeout(REQUEST_TIMEOUT_SECONDS))
    headers = {"Authorization": f"Bearer {args.key}", "Content-Type": "application/json"}

    async def send() -> Outcome:
        try:
            response = await client.post(args.url, content=body, headers=headers)
        except httpx.HTTPError as exc:
            return type(exc).__name__, f"{type(exc).__name__}: {exc}"
        if response.status_code == 202:
            return "202", None
        return str(response.status_code), response.text[:MAX_ERROR_TEXT]

    return [send] * args.concurrency, client


async def _main(args: argparse.Namespace) -> dict[str, Any]:
    body = job_body(args.records)
    client: httpx.AsyncClient | None = None
    close_raw: Callable[[], None] | None = None
    if args.client == "httpx":
        senders, client = _httpx_senders(args, body)
    else:
        senders, close_raw = _raw_senders(args, body)
    try:
        warmup = await _run_phase(senders, count=args.warmup, seconds=args.seconds)
        # The parent samples the servers' counters when it reads this line, and answers
        # before the measured phase starts (when run with --wait-for-go).
        print(json.dumps({"event": "measuring"}), flush=True)
        if args.wait_for_go:
            sys.stdin.readline()
        cpu_before = _cpu_seconds()
        measured = await _run_phase(senders, count=args.requests, seconds=args.seconds)
        cpu_seconds = _cpu_seconds() - cpu_before
    finally:
        if client is not None:
            await client.aclose()
        if close_raw is not None:
            close_raw()
    latencies = sorted(measured.latencies_ms)
    elapsed = measured.finished - measured.started
    accepted = measured.statuses.get("202", 0)
    return {
        "client": args.client,
        "body_bytes": len(body),
        "warmup_statuses": dict(warmup.statuses),
        "statuses": dict(measured.statuses),
        "accepted": accepted,
        "errors": sum(measured.statuses.values()) - accepted,
        "first_error": measured.first_error or warmup.first_error,
        "elapsed_seconds": elapsed,
        "accepted_per_second": accepted / elapsed if elapsed > 0 else 0.0,
        "p50_ms": _percentile(latencies, 0.50),
        "p95_ms": _percentile(latencies, 0.95),
        "p99_ms": _percentile(latencies, 0.99),
        "max_ms": latencies[-1] if latencies else None,
        "cpu_seconds": cpu_seconds,
    }


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--records", type=int, default=10)
    parser.add_argument("--client", choices=["raw", "httpx"], default="raw")
    parser.add_argument("--wait-for-go", action="store_true", help="read a line after warm-up")
    args = parser.parse_args()
    try:
        import uvloop  # noqa: PLC0415 - optional: the plain asyncio loop works without it
    except ImportError:  # the plain asyncio loop still works, only more slowly
        result = asyncio.run(_main(args))
    else:
        result = uvloop.run(_main(args))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
