"""Strict JSON for what clients send: the API's request bodies, form fields and NDJSON lines.

What is accepted is JSON as RFC 8259 defines it, in UTF-8, nested at most ``MAX_DEPTH``
containers deep, with numbers that fit (no ``NaN``/``Infinity``, nothing that overflows a
double, at most ``sys.get_int_max_str_digits()`` digits) and strings without unpaired
UTF-16 surrogates. Python's ``json`` accepts ``NaN``, decodes UTF-16 and UTF-32 bytes,
keeps lone surrogates (which neither UTF-8 nor PostgreSQL can store), raises
``RecursionError`` from about 1,000 levels and ``ValueError`` beyond 4,300 digits: each of
those was a 500 or a silent acceptance. orjson refuses all of them except depth (it allows
1,024, deeper than Python's encoder and pydantic can then handle), but reads integers
beyond 64 bits as floats, so a document with a run of 19 digits is parsed by ``json`` and
checked here value by value.

Not JSON at all (syntax, encoding, ``NaN``) is a 400 ``malformed-body``; JSON this API will
not take (depth, digits, surrogates, overflow) is a 422 with the reason.
"""

from __future__ import annotations

import json
import math
import sys
from typing import Any, NoReturn

import orjson

from celeriac.platform.errors import MalformedBody, ValidationFailed

# Records nest a few levels in practice; 64 leaves room for any real document and stays
# far below the recursion limits of json's encoder, pydantic and psycopg's JSONB adapter.
MAX_DEPTH = 64
# See celeriac.platform.jobs.payload: a run of 19 digits is where orjson and json differ.
_DIGITS_AS_ZEROS = bytes(0x30 if 0x30 <= b <= 0x39 else 0x20 for b in range(256))
_LONG_DIGITS = b"0" * 19


def too_deep(what: str = "the JSON") -> ValidationFailed:
    return ValidationFailed(f"{what} is nested more than {MAX_DEPTH} levels deep")


def parse(raw: bytes | str, what: str = "the request body") -> Any:
    """``raw`` as a JSON value, or the 400 / 422 that says what is wrong with it."""
    data = raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else raw
    if _LONG_DIGITS not in data.translate(_DIGITS_AS_ZEROS):
        try:
            value = orjson.loads(data)
        except orjson.JSONDecodeError:
            value = _checked(_python_json(data, what), what)  # to say what is wrong
        else:
            check_depth(value, data, what)
        return value
    return _checked(_python_json(data, what), what)


def check_depth(value: Any, raw: bytes, what: str = "the JSON") -> None:
    """422 when ``value`` (parsed from ``raw``) nests more than ``MAX_DEPTH`` containers."""
    # Counting brackets is one pass in C; only a document with enough of them is walked.
    if raw.count(b"{") + raw.count(b"[") <= MAX_DEPTH:
        return
    if not isinstance(value, dict | list):
        return
    pending: list[tuple[Any, int]] = [(value, 1)]
    while pending:
        item, depth = pending.pop()
        if depth > MAX_DEPTH:
            raise too_deep(what)
        for child in item.values() if isinstance(item, dict) else item:
            if isinstance(child, dict | list):
                pending.append((child, depth + 1))


def _refuse_constant(name: str) -> NoReturn:
    raise MalformedBody(f"{name} is not a JSON value (JSON has no NaN or Infinity)")


def _python_json(data: bytes, what: str) -> Any:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise MalformedBody(f"{what} is not UTF-8 text (JSON is UTF-8, RFC 8259)") from None
    try:
        return json.loads(text, parse_constant=_refuse_constant)
    except json.JSONDecodeError as exc:
        raise MalformedBody(
            f"{what} is not valid JSON ({exc.msg}: line {exc.lineno} column {exc.colno})"
        ) from None
    except RecursionError:
        raise too_deep(what) from None
    except ValueError:  # int() beyond the interpreter's digit limit
        raise ValidationFailed(
            f"{what} holds a number longer than {sys.get_int_max_str_digits()} digits"
        ) from None


def _checked(value: Any, what: str) -> Any:
    """What ``json`` accepted and this API does not: depth, surrogates, overflow."""
    pending: list[tuple[Any, int]] = [(value, 0)]
    while pending:
        item, depth = pending.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                raise ValidationFailed(
                    f"{what} holds a string with an unpaired UTF-16 surrogate"
                ) from None
        elif isinstance(item, float) and not math.isfinite(item):
            raise ValidationFailed(f"{what} holds a number too large for a double")
        elif isinstance(item, dict | list):
            if depth >= MAX_DEPTH:
                raise too_deep(what)
            children = [*item.keys(), *item.values()] if isinstance(item, dict) else item
            pending.extend((child, depth + 1) for child in children)
    return value
