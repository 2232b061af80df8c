"""Turning what a tenant sends (inline JSON, CSV or NDJSON) into the stored payload:
newline-delimited JSON objects, one record per line.

An NDJSON file is stored as it was sent, line for line (blank lines dropped): each line
is only checked to be a JSON object, not parsed into Python objects and encoded again.
For a 43 MB file that took 2.0 of the 2.2 s the API spent accepting it (``json.loads``
and ``json.dumps`` of 100,000 records); checking each line with orjson takes 0.12 s.
orjson parses exactly what ``json.loads`` parses, but refuses the few things only
Python's parser takes (``NaN``, ``Infinity``, numbers too large for a double, unpaired
UTF-16 surrogates): such a line is refused as the JSON body would be
(:mod:`celeriac.platform.json_input`), while an integer beyond 64 bits, which orjson
would read as a float, is parsed with ``json`` and stored re-encoded, so what a job
computes does not depend on the path its records took. Payloads stored before NaN was
refused are still read as ``json.loads`` reads them.
"""

from __future__ import annotations

import contextlib
import csv
import gc
import io
import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, BinaryIO

import orjson

from celeriac.platform import json_input
from celeriac.platform.errors import ProblemError, ValidationFailed

CSV_TYPES = {"text/csv", "application/csv"}
NDJSON_TYPES = {"application/x-ndjson", "application/ndjson", "application/jsonl"}
_UTF8_BOM = b"\xef\xbb\xbf"
# orjson reads an integer beyond 64 bits as a float where json.loads keeps it an int; such
# a number has at least 19 digits, and so a chunk with a run of 19 digits (a long number
# or just a long string of digits) is parsed with json. Found by mapping every digit to
# "0" and everything else to " " and searching for 19 zeros: 1.3 ms for a 2 MB chunk,
# where the regular expression \d{19} took 18 ms.
_DIGITS_AS_ZEROS = bytes(0x30 if 0x30 <= b <= 0x39 else 0x20 for b in range(256))
_LONG_DIGITS = b"0" * 19


@dataclass(frozen=True)
class Payload:
    """The records, one JSON object per item (UTF-8, no line break)."""

    lines: Sequence[bytes]

    @property
    def record_count(self) -> int:
        return len(self.lines)

    @property
    def size(self) -> int:
        """Bytes of the payload as NDJSON (a line break after each record)."""
        return sum(map(len, self.lines)) + len(self.lines)

    @property
    def ndjson(self) -> bytes:
        return b"\n".join(self.lines) + b"\n" if self.lines else b""


def chunks(payload: Payload, records_per_chunk: int) -> list[bytes]:
    """The payload cut into NDJSON chunks of at most ``records_per_chunk`` records."""
    lines = payload.lines
    return [
        b"\n".join(lines[start : start + records_per_chunk]) + b"\n"
        for start in range(0, len(lines), records_per_chunk)
    ]


def records(chunk: bytes) -> list[dict[str, Any]]:
    """The records of a stored NDJSON chunk: exactly what ``json.loads`` of each line
    gives, about three times faster (orjson; ``json`` for what orjson parses otherwise)."""
    lines = [line for line in chunk.splitlines() if line.strip()]
    with collector_paused():
        if _orjson_reads_as_json(chunk):
            with contextlib.suppress(orjson.JSONDecodeError):
                return [orjson.loads(line) for line in lines]
        return [json.loads(line) for line in lines]


def json_document(raw: bytes) -> Any:
    """One JSON document, exactly as ``json.loads`` reads it (orjson where they agree)."""
    with collector_paused():
        if _orjson_reads_as_json(raw):
            with contextlib.suppress(orjson.JSONDecodeError):
                return orjson.loads(raw)
        return json.loads(raw)


def json_bytes(value: Any) -> bytes:
    """A document (JSON-safe: no NaN, string keys) as JSON. orjson writes the 100,000
    records of a sentiment result in 10 ms, json in 60 to 130; it refuses only integers
    beyond 64 bits, which json writes."""
    try:
        return orjson.dumps(value)
    except TypeError:
        return json.dumps(value, allow_nan=False, separators=(",", ":")).encode()


def _orjson_reads_as_json(raw: bytes) -> bool:
    return _LONG_DIGITS not in raw.translate(_DIGITS_AS_ZEROS)


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """No cyclic garbage collection while records are parsed.

    Parsing 100,000 records creates millions of dicts and lists, and each 700 new
    containers start a collection whose older generations are walked again and again:
    ``json.loads`` of 100,000 records took 1.5 s with the collector on and 0.5 s with it
    paused (orjson: 0.67 s and 0.19 s). Parsed JSON holds no reference cycles, so the
    pause leaves no garbage behind. The switch is per process: call this only where one
    thread runs (compute pool processes, the distribution pool's greenlets, which cannot
    switch inside a parse), never in the API.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def chunk_key(payload_prefix: str, index: int) -> str:
    return f"{payload_prefix}{index:05d}.ndjson"


def from_records(records: Iterable[dict[str, Any]]) -> Payload:
    return Payload([_encoded(r) for r in records])


def _encoded(record: dict[str, Any]) -> bytes:
    # json, not orjson: orjson writes integers beyond 64 bits as floats.
    try:
        return json.dumps(record, separators=(",", ":"), ensure_ascii=False).encode()
    except UnicodeEncodeError:
        raise ValidationFailed("a string holds an unpaired UTF-16 surrogate") from None
    except RecursionError:
        raise json_input.too_deep("a record") from None


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
    """Check a CSV (header row, values as strings) or NDJSON file and turn it into the
    payload: CSV rows become JSON objects, NDJSON lines are kept as they are."""
    payload = Payload(list(file_lines(io.BytesIO(raw), fmt)))
    if not payload.lines:
        raise no_records()
    return payload


def no_records() -> ValidationFailed:
    return ValidationFailed("the file holds no records")


# How much of an uploaded file is read at a time: the file is never in memory whole.
READ_BYTES = 1 << 20


def file_lines(stream: BinaryIO, fmt: str, read_bytes: int = READ_BYTES) -> Iterator[bytes]:
    """The payload's lines of a CSV or NDJSON file, read ``read_bytes`` at a time and
    checked as they come: a bad line raises when it is reached, after the lines before it
    were given (the caller keeps nothing of a file that raises)."""
    if fmt == "csv":
        return _csv_lines(stream)
    return _ndjson_lines(stream, read_bytes)


def _csv_lines(stream: BinaryIO) -> Iterator[bytes]:
    text = io.TextIOWrapper(stream, encoding="utf-8-sig", newline="")
    # strict: without it an unclosed quote silently swallows the rest of the file into
    # one value (three lines became one record without a word).
    reader = csv.DictReader(text, strict=True)
    try:
        if not reader.fieldnames:
            raise ValidationFailed("the CSV file has no header row")
        for row in reader:
            if None in row:
                raise _bad_line(reader.line_num, "more values than header columns")
            yield _encoded(dict(row))
    except UnicodeDecodeError:
        raise ValidationFailed("the file is not UTF-8 text") from None
    except csv.Error as exc:
        detail = str(exc)
        if detail == "unexpected end of data":
            detail = 'a quoted value is not closed (a " is missing before the end of the file)'
        # DictReader.line_num is where the last good row ended (it is set only after a
        # row is read), so the row that failed starts on the next line.
        raise _bad_line(reader.line_num + 1, detail) from None
    finally:
        text.detach()  # the caller's stream stays open


def _ndjson_lines(stream: BinaryIO, read_bytes: int) -> Iterator[bytes]:
    """Every non-blank line, checked to be a JSON object (lines end at LF, CR or CRLF,
    as ``bytes.splitlines`` ends them, numbered as it numbers them)."""
    for number, line in enumerate(_split_lines(stream, read_bytes), start=1):
        checked = _ndjson_line(line, number)
        if checked is not None:
            yield checked


def _split_lines(stream: BinaryIO, read_bytes: int) -> Iterator[bytes]:
    """``stream.read().removeprefix(BOM).splitlines()``, one block at a time."""
    block = stream.read(read_bytes)
    while 0 < len(block) < len(_UTF8_BOM) and (more := stream.read(read_bytes)):
        block += more  # a short read: the byte order mark needs its three bytes
    end_of_file = not block
    block = block.removeprefix(_UTF8_BOM)
    carry = b""
    after_cr = False  # the lines given so far ended with a CR: a LF next is part of it
    while not end_of_file:
        if after_cr and block.startswith(b"\n"):
            block, after_cr = block[1:], False
        if block:
            data = carry + block
            end = max(data.rfind(b"\n"), data.rfind(b"\r"))
            if end >= 0:
                yield from data[: end + 1].splitlines()
                carry = data[end + 1 :]
                after_cr = data[end] == 0x0D and not carry
            else:
                carry, after_cr = data, False
        block = stream.read(read_bytes)
        end_of_file = not block
    if carry:
        yield from carry.splitlines()


def _ndjson_line(line: bytes, number: int) -> bytes | None:
    """The line as stored (None for a blank one), or the client's error."""
    try:
        # One record alive at a time: nothing piles up for the garbage collector.
        record = orjson.loads(line)
    except orjson.JSONDecodeError:
        return _python_json_line(line, number)
    if not isinstance(record, dict):
        raise _bad_line(number, "each line must be a JSON object")
    try:
        json_input.check_depth(record, line, "the line")
    except ProblemError as exc:
        raise _bad_line(number, exc.detail) from None
    return line


def _python_json_line(line: bytes, number: int) -> bytes | None:
    """A line orjson refused: blank (None), or what ``json.loads`` parses (see the
    module docstring), re-encoded as before; anything else is the client's error."""
    try:
        text = line.decode()
    except UnicodeDecodeError:
        raise ValidationFailed("the file is not UTF-8 text") from None
    if not text.strip():
        return None
    try:
        record = json_input.parse(line, what="the line")
    except ProblemError as exc:
        raise _bad_line(number, exc.detail) from None
    if not isinstance(record, dict):
        raise _bad_line(number, "each line must be a JSON object")
    return _encoded(record)
