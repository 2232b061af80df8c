"""Turning what a tenant sends (inline JSON, CSV or NDJSON) into the stored payload:
newline-delimited JSON objects, one record per line."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from celeriac.platform.errors import ValidationFailed

CSV_TYPES = {"text/csv", "application/csv"}
NDJSON_TYPES = {"application/x-ndjson", "application/ndjson", "application/jsonl"}


@dataclass(frozen=True)
class Payload:
    ndjson: bytes
    record_count: int


def chunks(payload: Payload, records_per_chunk: int) -> list[bytes]:
    """The payload cut into NDJSON chunks of at most ``records_per_chunk`` records."""
    lines = payload.ndjson.splitlines(keepends=True)
    return [
        b"".join(lines[start : start + records_per_chunk])
        for start in range(0, len(lines), records_per_chunk)
    ]


def chunk_key(payload_prefix: str, index: int) -> str:
    return f"{payload_prefix}{index:05d}.ndjson"


def from_records(records: Iterable[dict[str, Any]]) -> Payload:
    lines = [json.dumps(r, separators=(",", ":"), ensure_ascii=False) for r in records]
    return Payload(("\n".join(lines) + "\n").encode(), len(lines))


def file_format(content_type: str | None, filename: str | None) -> str:
    media = (content_type or "").split(";", 1)[0].strip().lower()
    name = (filename or "").lower()
    if media in CSV_TYPES or name.endswith(".csv"):
        return "csv"
    if media in NDJSON_TYPES or name.endswith((".ndjson", ".jsonl")):
        return "ndjson"
    raise ValidationFailed(
        "the file must be CSV (text/csv, .csv) or NDJSON (application/x-ndjson, .ndjson)",
        errors=[{"pointer": "#/body/file", "detail": f"unsupported file type {media or name!r}"}],
    )


def _bad_line(line: int, detail: str) -> ValidationFailed:
    return ValidationFailed(
        f"line {line} of the file: {detail}",
        errors=[{"pointer": f"#/body/file/{line}", "detail": detail}],
    )


def from_file(raw: bytes, fmt: str) -> Payload:
    """Parse a CSV (header row, values as strings) or NDJSON file into records."""
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ValidationFailed("the file is not UTF-8 text") from None
    records: list[dict[str, Any]] = []
    if fmt == "csv":
        reader = csv.DictReader(io.StringIO(text, newline=""))
        if not reader.fieldnames:
            raise ValidationFailed("the CSV file has no header row")
        try:
            for row in reader:
                if None in row:
                    raise _bad_line(reader.line_num, "more values than header columns")
                records.append(dict(row))
        except csv.Error as exc:
            raise _bad_line(reader.line_num, str(exc)) from None
    else:
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise _bad_line(number, f"not valid JSON ({exc.msg})") from None
            if not isinstance(record, dict):
                raise _bad_line(number, "each line must be a JSON object")
            records.append(record)
    if not records:
        raise ValidationFailed("the file holds no records")
    return from_records(records)
