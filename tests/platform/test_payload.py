"""The stored payload: NDJSON uploads kept line for line, and the compute side's parser
giving exactly what ``json.loads`` gives, whichever parser it used."""

from __future__ import annotations

import gc
import io
import json
import math
import random
from pathlib import Path

import pytest

from celeriac.platform.errors import ValidationFailed
from celeriac.platform.jobs import payload

SAMPLE = Path(__file__).resolve().parent.parent / "data" / "sample_1000.ndjson"


def _same(left: object, right: object) -> bool:
    """Equal, with the same types all the way down (1 is not 1.0, NaN equals NaN)."""
    if type(left) is not type(right):
        return False
    if isinstance(left, dict):
        assert isinstance(right, dict)
        return list(left) == list(right) and all(_same(left[k], right[k]) for k in left)
    if isinstance(left, list):
        assert isinstance(right, list)
        return len(left) == len(right) and all(map(_same, left, right))
    if isinstance(left, float) and isinstance(right, float):
        return (math.isnan(left) and math.isnan(right)) or repr(left) == repr(right)
    return left == right


def test_ndjson_upload_is_stored_line_for_line() -> None:
    raw = SAMPLE.read_bytes()
    stored = payload.from_file(raw, "ndjson")
    assert stored.record_count == 1000
    assert stored.ndjson == raw  # not parsed and encoded again
    assert stored.size == len(raw)
    chunked = payload.chunks(stored, 300)
    assert [c.count(b"\n") for c in chunked] == [300, 300, 300, 100]
    assert b"".join(chunked) == raw


def test_blank_lines_line_ends_and_a_byte_order_mark() -> None:
    raw = b'\xef\xbb\xbf{"a": 1}\r\n\r\n  \n{"b": [2]}\r{"c": {}}\n\n'
    stored = payload.from_file(raw, "ndjson")
    assert list(stored.lines) == [b'{"a": 1}', b'{"b": [2]}', b'{"c": {}}']
    assert payload.records(stored.ndjson) == [{"a": 1}, {"b": [2]}, {"c": {}}]


@pytest.mark.parametrize(
    ("line", "stored"),
    [
        # An integer orjson would read as a float keeps its value (json parses the line).
        (b'{"x": 123456789012345678901234567890}', b'{"x": 123456789012345678901234567890}'),
    ],
)
def test_lines_only_python_json_reads_keep_their_meaning(line: bytes, stored: bytes) -> None:
    kept = payload.from_file(b'{"n": 1}\n' + line + b"\n", "ndjson")
    assert list(kept.lines) == [b'{"n": 1}', stored]
    assert _same(payload.records(kept.ndjson)[1], json.loads(line))


@pytest.mark.parametrize(
    ("content", "pointer", "detail"),
    [
        (b'{"a":1}\n\n[1]\n', "#/body/file/3", "each line must be a JSON object"),
        (b'{"a":1}\n{"a":\n', "#/body/file/2", "not valid JSON"),
        (b'{"a":"\\ud800"}\n', "#/body/file/1", "unpaired UTF-16 surrogate"),
        (b'{"a":' + b"[" * 5000 + b"]" * 5000 + b"}\n", "#/body/file/1", "nested more than"),
        (b'{"a":' + b"[" * 65 + b"]" * 65 + b"}\n", "#/body/file/1", "nested more than"),
        # Not JSON (RFC 8259), as in a JSON body: NaN, Infinity, a double's overflow
        (b'{"x": NaN}\n', "#/body/file/1", "NaN"),
        (b'{"a":1}\n{"y": -Infinity}\n', "#/body/file/2", "Infinity"),
        (b'{"x": 1e400}\n', "#/body/file/1", "too large for a double"),
    ],
)
def test_bad_lines_are_the_clients_error(content: bytes, pointer: str, detail: str) -> None:
    with pytest.raises(ValidationFailed) as raised:
        payload.from_file(content, "ndjson")
    assert raised.value.errors[0]["pointer"] == pointer
    assert detail in str(raised.value)


def test_not_utf8_and_no_records() -> None:
    with pytest.raises(ValidationFailed, match="UTF-8"):
        payload.from_file(b'{"a": "\xff"}\n', "ndjson")
    with pytest.raises(ValidationFailed, match="no records"):
        payload.from_file(b"\n \n", "ndjson")


def test_records_are_what_json_loads_gives() -> None:
    lines = SAMPLE.read_bytes().splitlines()
    awkward = [
        b'{"big": 18446744073709551615, "bigger": 18446744073709551616}',
        b'{"small": -9223372036854775808, "smaller": -9223372036854775809}',
        b'{"digits": "1234567890123456789", "f": 0.1, "e": 1e-7, "z": -0.0, "i": 10}',
        b'{"u": "\\u00e9\\ud83d\\ude00", "nested": {"a": [1, {"b": null}]}, "t": true}',
        b'{"dup": 1, "dup": 2}',
    ]
    for chunk in (lines, awkward, [*lines[:10], b'{"nan": NaN}']):
        raw = b"\n".join(chunk) + b"\n"
        expected = [json.loads(line) for line in chunk]
        assert _same(payload.records(raw), expected)


def test_records_leave_the_collector_as_it_was() -> None:
    assert gc.isenabled()
    payload.records(b'{"a": 1}\n')
    assert gc.isenabled()
    gc.disable()
    try:
        payload.records(b'{"a": 1}\n')
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_a_json_document_is_what_json_loads_gives() -> None:
    for raw in (
        b'{"a": [1, 2.5, null], "b": {"c": "\\u00e9"}}',
        b'{"n": 18446744073709551616}',
        b'{"x": NaN}',
        b"[]",
    ):
        assert _same(payload.json_document(raw), json.loads(raw))


STREAMED = [
    b'\xef\xbb\xbf{"a": 1}\r\n\r\n  \n{"b": [2]}\r{"c": {}}\n\n',
    b'{"a": 1}\r\n{"b": 2}\r\n',
    b'{"a": 1}\r\r\n\n{"b": 2}\r',
    b'{"a": 1}\n{"b": 2}',
    b'\xef\xbb\xbf{"a": "\xc3\xa9\xe2\x82\xac"}\r\n',
    b"\xef\xbb",
    b"",
]


@pytest.mark.parametrize("raw", STREAMED)
def test_a_streamed_file_splits_into_the_lines_the_whole_one_gives(raw: bytes) -> None:
    """Read in blocks of any size, from one byte up, a file gives the same lines, numbered
    alike, as ``splitlines`` of the whole: a CR and its LF in two blocks are one line end,
    a byte order mark split across blocks is still dropped."""
    whole = raw.removeprefix(b"\xef\xbb\xbf").splitlines()
    for size in (1, 2, 3, 4, 7, 64):
        assert list(payload._split_lines(io.BytesIO(raw), size)) == whole, size


def test_a_bad_line_is_numbered_alike_in_any_block_size() -> None:
    raw = b'{"a": 1}\r\n\r\n{"b": 2}\r[3]\n'
    for size in (1, 2, 5, 1 << 20):
        with pytest.raises(ValidationFailed) as raised:
            list(payload.file_lines(io.BytesIO(raw), "ndjson", size))
        assert raised.value.errors == [
            {"pointer": "#/body/file/4", "detail": "each line must be a JSON object"}
        ]


def test_file_lines_give_lines_until_the_bad_one() -> None:
    """Lines are checked as they are read: those before a bad line come out first (the
    caller, which writes them, deletes what it wrote when the bad one raises)."""
    lines = payload.file_lines(io.BytesIO(b'{"a": 1}\n{"b": 2}\n{"c": \n'), "ndjson", 4)
    assert next(lines) == b'{"a": 1}'
    assert next(lines) == b'{"b": 2}'
    with pytest.raises(ValidationFailed):
        next(lines)


def test_a_streamed_csv_gives_the_records_of_the_whole_one() -> None:
    raw = '\ufeffid,text\r\n1,"a, ""quoted""\r\nvalue"\r\n2,é\r\n'.encode()
    stream = io.BytesIO(raw)
    assert [json.loads(line) for line in payload.file_lines(stream, "csv")] == [
        {"id": "1", "text": 'a, "quoted"\r\nvalue'},
        {"id": "2", "text": "é"},
    ]
    assert not stream.closed  # the caller's file is left open
    with pytest.raises(ValidationFailed, match="not UTF-8"):
        list(payload.file_lines(io.BytesIO(b"id\n1\n\xff\n"), "csv"))


def test_random_line_ends_split_alike_in_any_block_size() -> None:
    rng = random.Random(16)
    for _ in range(300):
        raw = bytes(rng.choice(b"\r\n\r\nab\xef\xbb\xbf") for _ in range(rng.randrange(40)))
        whole = raw.removeprefix(b"\xef\xbb\xbf").splitlines()
        size = rng.randrange(1, 9)
        assert list(payload._split_lines(io.BytesIO(raw), size)) == whole, (raw, size)
