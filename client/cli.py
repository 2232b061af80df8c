"""``celeriac-client``: the tenant API from a shell.

The key comes from ``--api-key`` or ``CELERIAC_API_KEY``, the URL from ``--url`` or
``CELERIAC_URL``::

    celeriac-client jobs submit records.csv --pipeline tabular-summary --wait
    celeriac-client jobs list --state succeeded
    celeriac-client jobs results JOB_ID --output results.json
    celeriac-client jobs watch JOB_ID
    celeriac-client webhooks listen --port 4242 --secret whsec_...

``webhooks listen`` is a local receiver for developing a webhook consumer (as ``stripe
listen`` is): it verifies each delivery's signature and prints the event.

argparse rather than typer or click: the SDK's distribution depends on httpx and pydantic
only. Exit status: 0, 1 for an API or usage error, 3 when a waited-for job did not succeed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from celeriac.client._sync import Client, Job
from celeriac.client.errors import APIError, CeleriacError
from celeriac.client.models import JobEvent, JobState
from celeriac.client.webhooks import InvalidSignature, verify

EXIT_ERROR = 1
EXIT_JOB_UNSUCCESSFUL = 3


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, default=str))


def _job_json(job: Job) -> dict[str, Any]:
    return job.model_dump(mode="json", exclude_none=True)


def _table(rows: Sequence[Sequence[str]], headers: Sequence[str]) -> str:
    """A plain text table (rich is optional)."""
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]
    lines = ["  ".join(str(h).ljust(w) for h, w in zip(headers, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(lines)


def _shape(value: Any) -> str:
    if isinstance(value, list):
        return f"{len(value)} rows"
    if isinstance(value, dict):
        keys = list(value)
        more = f", +{len(keys) - 4}" if len(keys) > 4 else ""
        return f"{len(keys)} fields: {', '.join(map(str, keys[:4]))}{more}"
    return json.dumps(value, default=str)[:60]


def results_summary(document: dict[str, Any]) -> str:
    """One row per analyzer and dataset of a result document, then its errors."""
    rows = [
        [analyzer, dataset, _shape(result)]
        for analyzer, per_dataset in sorted((document.get("analyses") or {}).items())
        for dataset, result in sorted(per_dataset.items())
    ]
    text = _table(rows, ["analyzer", "dataset", "result"]) if rows else "(no analyses)"
    errors = document.get("errors") or []
    if errors:
        text += f"\n{len(errors)} error(s):\n" + "\n".join(f"  {e}" for e in errors)
    return text


def _event_line(event: JobEvent) -> str:
    if event.type == "progress":
        failed = f", {event.failed} failed" if event.failed else ""
        return f"{event.id}  progress  {event.stage} {event.done}/{event.total}{failed}"
    return f"{event.id}  {event.state.value}"


# -- commands -----------------------------------------------------------------------------


def _submit(client: Client, args: argparse.Namespace) -> int:
    pipeline: Any = args.pipeline
    if pipeline.lstrip().startswith("{"):
        pipeline = json.loads(pipeline)
    metadata = json.loads(args.metadata) if args.metadata else None
    job = client.jobs.submit(
        file=Path(args.file), pipeline=pipeline, priority=args.priority, metadata=metadata
    )
    print(f"job {job.id} {job.state.value} ({job.record_count} records)", file=sys.stderr)
    if not args.wait:
        _print_json(_job_json(job))
        return 0
    job = job.wait(progress=True, timeout=args.timeout)
    print(f"job {job.id} {job.state.value} in {job.duration_ms} ms", file=sys.stderr)
    if job.state in (JobState.SUCCEEDED, JobState.PARTIAL):
        print(results_summary(job.results()))
    elif job.error:
        print(job.error, file=sys.stderr)
    return 0 if job.state is JobState.SUCCEEDED else EXIT_JOB_UNSUCCESSFUL


def _list(client: Client, args: argparse.Namespace) -> int:
    rows = []
    for job in client.jobs.list(state=args.state, page_size=min(args.limit, 100)):
        rows.append(
            [
                str(job.id),
                job.state.value,
                job.priority.value,
                str(job.record_count),
                job.created_at.isoformat(timespec="seconds"),
            ]
        )
        if len(rows) >= args.limit:
            break
    print(_table(rows, ["id", "state", "priority", "records", "created_at"]))
    return 0


def _get(client: Client, args: argparse.Namespace) -> int:
    _print_json(_job_json(client.jobs.get(args.id)))
    return 0


def _results(client: Client, args: argparse.Namespace) -> int:
    document = client.jobs.results(args.id)
    if args.output:
        Path(args.output).write_text(json.dumps(document, indent=2))
        print(f"results of job {args.id} written to {args.output}", file=sys.stderr)
        print(results_summary(document))
    else:
        _print_json(document)
    return 0


def _cancel(client: Client, args: argparse.Namespace) -> int:
    _print_json(_job_json(client.jobs.cancel(args.id)))
    return 0


def _rerun(client: Client, args: argparse.Namespace) -> int:
    job = client.jobs.rerun(args.id, pipeline=args.pipeline, priority=args.priority)
    _print_json(_job_json(job))
    return 0


def _delete(client: Client, args: argparse.Namespace) -> int:
    client.jobs.delete(args.id)
    print(f"job {args.id}: data deleted", file=sys.stderr)
    return 0


def _watch(client: Client, args: argparse.Namespace) -> int:
    last: JobEvent | None = None
    for event in client.jobs.events(args.id, timeout=args.timeout):
        print(_event_line(event), flush=True)
        last = event
    return 0 if last is not None and last.state is JobState.SUCCEEDED else EXIT_JOB_UNSUCCESSFUL


def receiver(secret: str, out: Any = None) -> type[BaseHTTPRequestHandler]:
    """The request handler of ``webhooks listen``: 200 and the event printed for an
    authentic delivery, 400 and the reason for any other request."""
    stream = out or sys.stdout

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            raw = self.rfile.read(int(self.headers.get("content-length") or 0))
            try:
                event = verify(secret, dict(self.headers.items()), raw)
            except InvalidSignature as exc:
                self._answer(400, {"error": str(exc)})
                print(f"REJECTED {self.path}: {exc}", file=stream, flush=True)
                return
            self._answer(200, {"received": event.get("type")})
            print(
                json.dumps(
                    {
                        "webhook-id": event.get("webhook-id"),
                        "type": event.get("type"),
                        "data": event.get("data"),
                    }
                ),
                file=stream,
                flush=True,
            )

        def _answer(self, status: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: Any) -> None:
            pass

    return Handler


def _listen(args: argparse.Namespace) -> int:
    secret = args.secret or os.environ.get("CELERIAC_WEBHOOK_SECRET")
    if not secret:
        print(
            "a target's signing secret is needed: --secret or CELERIAC_WEBHOOK_SECRET",
            file=sys.stderr,
        )
        return EXIT_ERROR
    server = ThreadingHTTPServer((args.host, args.port), receiver(secret))
    host, port = server.server_address[:2]
    print(f"listening on http://{host!s}:{port}/ (Ctrl-C stops)", file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


def parser() -> argparse.ArgumentParser:
    """The command line's grammar."""
    root = argparse.ArgumentParser(prog="celeriac-client", description=__doc__.split("\n")[0])
    root.add_argument("--url", help="API base URL (CELERIAC_URL)")
    root.add_argument("--api-key", help="tenant API key (CELERIAC_API_KEY)")
    groups = root.add_subparsers(dest="group", required=True)

    jobs = groups.add_parser("jobs", help="submit and follow jobs").add_subparsers(
        dest="command", required=True
    )
    submit = jobs.add_parser("submit", help="submit a CSV or NDJSON file")
    submit.add_argument("file")
    submit.add_argument("--pipeline", required=True, help="a pipeline name or its JSON spec")
    submit.add_argument("--priority", default="normal", choices=["high", "normal", "low"])
    submit.add_argument("--metadata", help="a JSON object")
    submit.add_argument("--wait", action="store_true", help="show progress, then the results")
    submit.add_argument("--timeout", type=float, default=None, help="seconds to wait at most")
    submit.set_defaults(run=_submit)
    listing = jobs.add_parser("list", help="the newest jobs")
    listing.add_argument("--state")
    listing.add_argument("--limit", type=int, default=20)
    listing.set_defaults(run=_list)
    for name, run, text in (
        ("get", _get, "a job's state and progress"),
        ("cancel", _cancel, "cancel a job"),
        ("delete", _delete, "delete a finished job's data"),
    ):
        command = jobs.add_parser(name, help=text)
        command.add_argument("id")
        command.set_defaults(run=run)
    results = jobs.add_parser("results", help="a finished job's result document")
    results.add_argument("id")
    results.add_argument("--output", help="write the JSON to this file")
    results.set_defaults(run=_results)
    rerun = jobs.add_parser("rerun", help="run a job again on its stored records")
    rerun.add_argument("id")
    rerun.add_argument("--pipeline")
    rerun.add_argument("--priority", choices=["high", "normal", "low"])
    rerun.set_defaults(run=_rerun)
    watch = jobs.add_parser("watch", help="print a job's live events until it ends")
    watch.add_argument("id")
    watch.add_argument("--timeout", type=float, default=None)
    watch.set_defaults(run=_watch)

    hooks = groups.add_parser("webhooks", help="develop a webhook consumer").add_subparsers(
        dest="command", required=True
    )
    listen = hooks.add_parser("listen", help="a local receiver that verifies and prints events")
    listen.add_argument("--port", type=int, required=True)
    listen.add_argument("--host", default="127.0.0.1")
    listen.add_argument("--secret", help="the target's signing secret (CELERIAC_WEBHOOK_SECRET)")
    listen.set_defaults(run=None)
    return root


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns the exit status."""
    args = parser().parse_args(argv)
    if args.group == "webhooks":
        return _listen(args)
    try:
        with Client(base_url=args.url, api_key=args.api_key) as client:
            return int(args.run(client, args))
    except APIError as exc:
        print(f"error: {exc}", file=sys.stderr)
        for error in exc.errors:
            print(f"  {error.get('pointer', '')}: {error.get('detail', '')}", file=sys.stderr)
        return EXIT_ERROR
    except (CeleriacError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
