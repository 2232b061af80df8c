"""What the sync and the async client share: the retry policy, the request of a
submission, the event-stream parser, tabular results and the operation registry."""

from __future__ import annotations

import json
import random
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, cast

import httpx

from celeriac.client.errors import retry_after_seconds

if TYPE_CHECKING:
    import pandas as pd

DEFAULT_TIMEOUT = httpx.Timeout(30.0, connect=5.0)
USER_AGENT = "celeriac-client/0.1"
RETRIED_STATUSES = frozenset({429, 503})
F = TypeVar("F", bound=Callable[..., Any])

# (method, path template) of every API operation an SDK method calls; the test of the
# OpenAPI document fails when a tenant operation is missing from it.
OPERATIONS: set[tuple[str, str]] = set()


def operation(method: str, path: str) -> Callable[[F], F]:
    """Mark an SDK method as the one that calls ``method path``."""

    def mark(func: F) -> F:
        OPERATIONS.add((method.upper(), path))
        func.__celeriac_operation__ = (method.upper(), path)  # type: ignore[attr-defined]
        return func

    return mark


@dataclass(frozen=True)
class RetryPolicy:
    """429 and 503 answers (and connection failures) are retried at most ``max_retries``
    times per call, waiting what ``Retry-After`` says (else an exponential backoff with
    jitter), and never more than ``max_wait`` seconds in all: an answer asking for a longer
    wait (a monthly quota's ``Retry-After`` runs to the month's end) raises at once."""

    max_retries: int = 3
    max_wait: float = 30.0
    backoff: float = 0.5

    def delay(self, attempt: int, response: httpx.Response | None) -> float:
        """Seconds to wait before retry number ``attempt`` (1-based)."""
        after = retry_after_seconds(response) if response is not None else None
        if after is not None:
            return after
        return float(self.backoff * 2 ** (attempt - 1) * (0.5 + random.random()))  # noqa: S311


class Attempts:
    """The retry budget of one call."""

    def __init__(self, policy: RetryPolicy) -> None:
        self.policy = policy
        self.retries = 0
        self.waited = 0.0

    def next_delay(self, response: httpx.Response | None) -> float | None:
        """How long to wait before trying again, or None when the budget is spent."""
        if self.retries >= self.policy.max_retries:
            return None
        delay = self.policy.delay(self.retries + 1, response)
        if self.waited + delay > self.policy.max_wait:
            return None
        self.retries += 1
        self.waited += delay
        return delay


def should_retry(response: httpx.Response) -> bool:
    return response.status_code in RETRIED_STATUSES


def new_idempotency_key() -> str:
    return f"sdk-{uuid.uuid4()}"


def auth_headers(api_key: str) -> dict[str, str]:
    return {
        "Authorization": f"Bearer {api_key}",
        "User-Agent": USER_AGENT,
        "Accept": "application/json",
    }


# -- submissions ------------------------------------------------------------------------

_FILE_TYPES = {
    ".csv": "text/csv",
    ".ndjson": "application/x-ndjson",
    ".jsonl": "application/x-ndjson",
}


@dataclass
class SubmitRequest:
    """The body of ``POST /v1/jobs``: inline JSON records, or a file part."""

    json: dict[str, Any] | None = None
    data: dict[str, str] | None = None
    files: dict[str, tuple[str, bytes, str]] | None = None


def _is_frame(value: Any) -> bool:
    module = type(value).__module__
    return module.split(".")[0] == "pandas" and type(value).__name__ == "DataFrame"


def submit_request(
    records: Iterable[Mapping[str, Any]] | pd.DataFrame | None,
    *,
    file: str | Path | None,
    pipeline: str | Mapping[str, Any],
    priority: str,
    metadata: Mapping[str, Any] | None,
) -> SubmitRequest:
    """Inline records go as JSON; a DataFrame goes as an NDJSON file (its dtypes survive
    better than through CSV, and the API streams files); a ``.csv``, ``.ndjson`` or
    ``.jsonl`` path goes as it is."""
    if (records is None) == (file is None):
        raise ValueError("pass either records (a list of dicts or a DataFrame) or file")
    options: dict[str, Any] = {"pipeline": pipeline, "priority": str(priority)}
    if metadata:
        options["metadata"] = dict(metadata)
    if records is not None and not _is_frame(records):
        rows = [dict(r) for r in cast("Iterable[Mapping[str, Any]]", records)]
        if not rows:
            raise ValueError("records is empty: a job needs at least one record")
        return SubmitRequest(json={**options, "records": rows})
    if records is not None:
        frame: Any = records
        body = frame.to_json(orient="records", lines=True, date_format="iso")
        name, content, media = "records.ndjson", body.encode(), "application/x-ndjson"
    else:
        path = Path(cast("str | Path", file))
        media_type = _FILE_TYPES.get(path.suffix.lower())
        if media_type is None:
            raise ValueError(f"{path}: send a .csv, .ndjson or .jsonl file")
        name, content, media = path.name, path.read_bytes(), media_type
    form = {k: v if isinstance(v, str) else json.dumps(v) for k, v in options.items()}
    return SubmitRequest(data=form, files={"file": (name, content, media)})


# -- results ----------------------------------------------------------------------------


def _records_like(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, dict) for v in value)


def _columns_like(value: Any) -> bool:
    """A mapping of column -> statistics (the summary analyzer's shape)."""
    return (
        isinstance(value, dict)
        and bool(value)
        and all(
            isinstance(v, dict) and not any(isinstance(x, dict | list) for x in v.values())
            for v in value.values()
        )
    )


def as_frames(value: Any) -> Any:
    """The result document with every tabular part as a pandas object: a list of records
    becomes a DataFrame, a mapping of column -> statistics a DataFrame indexed by
    column; other values stay as they are."""
    try:
        import pandas as pd  # noqa: PLC0415 - pandas is optional for the client
    except ImportError:
        raise ImportError(
            "results(as_frame=True) needs pandas: pip install 'celeriac-client[pandas]'"
        ) from None
    if _records_like(value):
        return pd.DataFrame.from_records(value)
    if _columns_like(value):
        return pd.DataFrame.from_dict(value, orient="index")
    if isinstance(value, dict):
        return {k: as_frames(v) for k, v in value.items()}
    return value


# -- Server-Sent Events -----------------------------------------------------------------


def is_final_event_id(event_id: str) -> bool:
    """Whether a job event's id is that of its final state: ids are cursors whose first
    field is the state's rank, 2 once the job has ended (platform/jobs/events.py)."""
    return event_id.startswith("2.")


@dataclass
class ServerSentEvent:
    event: str
    data: str
    id: str | None


class SSEDecoder:
    """The event-stream parsing algorithm of the HTML standard (9.2.6), line by line.

    httpx-sse does this too; it is these few lines, and the SDK depends on httpx and
    pydantic only."""

    def __init__(self) -> None:
        self._event = ""
        self._data: list[str] = []
        self._id: str | None = None
        self.last_event_id: str | None = None
        self.retry_ms: int | None = None

    def feed(self, line: str) -> ServerSentEvent | None:
        """Take one line (without its end); an event when the line ends one."""
        if not line:
            if not self._data and not self._event:
                return None
            event = ServerSentEvent(self._event or "message", "\n".join(self._data), self._id)
            self._event, self._data = "", []
            return event
        if line.startswith(":"):
            return None  # a comment: the server's heartbeat
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)
        elif name == "id" and "\0" not in value:
            self._id = self.last_event_id = value
        elif name == "retry" and value.isdigit():
            self.retry_ms = int(value)
        return None
