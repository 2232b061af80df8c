"""``tabular``: nested JSON records flattened into a typed table.

``generate`` flattens a chunk as ``pd.json_normalize`` does (``.`` between levels) and
keeps each column as booleans, numbers or text (Parquet-safe, so that the canvas can
store partials); ``combine`` concatenates the chunks and only then infers column types,
because a type decided per chunk could differ between chunks (``"12"`` in one, ``"n/a"``
in another) and the dataset must not depend on where chunks were cut.

Type inference, per column, on the whole dataset:

- JSON booleans, or strings that are all ``true``/``false`` (any case) -> ``boolean``;
- JSON numbers, or strings that all convert to finite numbers -> int64 (float64 with
  nulls);
- strings that all parse as ISO 8601 timestamps -> ``datetime64[ns, UTC]`` (naive
  values are taken as UTC);
- anything else -> strings (lists and objects as JSON text);
- a column of nulls only -> object, all None.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any, Final, cast

import numpy as np
import pandas as pd
from pydantic import Field

from celeriac.workers.compute.plugin import (
    DatasetGenerator,
    Parameters,
    Records,
    flatten_records,
)

TIMESTAMP_DTYPE: Final = "datetime64[ns, UTC]"
# Values tried before converting a whole column: most string columns fail on the first
# few, which saves parsing 100,000 free-text values as numbers and dates.
_PROBE = 64
# Columns up to this length are converted at once, without the pandas probe: on a short
# column the probe only parses the same values twice.
_PROBE_ABOVE = 1024


class TabularParameters(Parameters):
    """Parameters of the ``tabular`` dataset generator."""

    max_depth: int | None = Field(
        default=None,
        ge=0,
        description="Flatten nested objects down to this depth (none: all the way); "
        "deeper objects become JSON text.",
    )
    columns: list[str] | None = Field(
        default=None,
        min_length=1,
        description="Keep only these flattened columns (e.g. 'order.amount'), in this "
        "order; a column no record has is all nulls.",
    )


class Tabular(DatasetGenerator[TabularParameters]):
    """Flattens nested JSON records into a table and infers column types."""

    name = "tabular"
    version = "1.0.0"
    description = "Nested JSON records flattened into a typed table (numbers, booleans, "
    "UTC timestamps, strings)."
    parameters = TabularParameters
    produces = "table"

    def generate(self, records: Records, params: TabularParameters) -> pd.DataFrame:
        """The chunk flattened, each column in a Parquet-safe form that keeps what type
        inference needs: booleans, numbers, or text (mixed values as their JSON text)."""
        rows = records.to_dict(orient="records") if isinstance(records, pd.DataFrame) else records
        if not len(rows):
            frame = pd.DataFrame()
        elif params.max_depth is None:
            frame = flatten_records(cast("Sequence[Mapping[str, Any]]", rows))
        else:
            records_list = cast("list[dict[str, Any]]", list(rows))
            frame = pd.json_normalize(records_list, sep=".", max_level=params.max_depth)
        if params.columns is not None:
            frame = frame.reindex(columns=params.columns)
        return pd.DataFrame({str(name): _chunk_column(frame[name]) for name in frame.columns})

    def combine(self, partials: Sequence[pd.DataFrame], params: TabularParameters) -> pd.DataFrame:
        """The chunks concatenated in order, with types inferred on the whole table.

        A column that chunks hold in different forms (numbers in one, text in another)
        is turned into text first, rendered as a single chunk would have rendered it.
        """
        frames = [p.reset_index(drop=True) for p in partials if len(p.columns)]
        names = list(dict.fromkeys(str(c) for p in frames for c in p.columns))
        if params.columns is not None:
            names = list(params.columns)
        columns: dict[str, pd.Series[Any]] = {}
        if (
            len(frames) == 1
            and params.columns is None
            and all(isinstance(c, str) for c in frames[0].columns)
        ):
            # One chunk (every small job): no forms to reconcile, nothing to concatenate.
            only = frames[0]
            return pd.DataFrame(
                {name: infer_column(only[name]) for name in names}, index=only.index
            )
        for name in names:
            parts = [
                p[name] if name in p.columns else pd.Series(np.nan, index=p.index, dtype=object)
                for p in frames
            ]
            forms = {_form(part.dtype) for part in parts if part.notna().any()}
            if len(forms) > 1:
                parts = [part.map(_as_text, na_action="ignore").astype(object) for part in parts]
            column = pd.concat(parts, ignore_index=True) if parts else pd.Series([], dtype=object)
            columns[name] = infer_column(column)
        return pd.DataFrame(columns, index=pd.RangeIndex(sum(len(p) for p in frames)))


def _chunk_column(column: pd.Series[Any]) -> pd.Series[Any]:
    """A flattened column as booleans, numbers or text (Parquet-safe), nulls kept."""
    dtype = column.dtype
    if not pd.api.types.is_object_dtype(dtype) or not column.notna().any():
        return column
    kind = pd.api.types.infer_dtype(column, skipna=True)
    if kind == "boolean":
        return column.astype("boolean")
    if kind in ("integer", "floating", "mixed-integer-float"):
        return pd.to_numeric(column)
    if kind == "string":
        return column.astype("str")
    return column.map(_as_text, na_action="ignore").astype("str")


def _form(dtype: Any) -> str:
    if pd.api.types.is_bool_dtype(dtype):
        return "boolean"
    if pd.api.types.is_numeric_dtype(dtype):
        return "number"
    if pd.api.types.is_datetime64_any_dtype(dtype):
        return "timestamp"
    return "text"


def infer_column(column: pd.Series[Any]) -> pd.Series[Any]:
    """One column converted to boolean, number, UTC timestamp or string (a column of
    nulls only has no type: object, all None)."""
    dtype = column.dtype
    present = column.notna()
    if not present.any():
        return pd.Series([None] * len(column), index=column.index, dtype=object)
    if pd.api.types.is_bool_dtype(dtype):
        return column.astype("boolean")
    if pd.api.types.is_numeric_dtype(dtype):
        return column
    if isinstance(dtype, pd.DatetimeTZDtype) or pd.api.types.is_datetime64_dtype(dtype):
        converted = _timestamps(column)
        return column if converted is None else converted
    kind = pd.api.types.infer_dtype(column, skipna=True)
    if kind == "boolean":
        return column.astype("boolean")
    if kind in ("integer", "floating", "mixed-integer-float", "decimal"):
        return pd.to_numeric(column)
    if kind == "string":
        return _from_strings(column, present)
    if kind == "mixed-integer":  # numbers and strings: numbers if the strings are too
        converted = _numbers(column, present)
        if converted is not None:
            return converted
    return column.map(_as_text, na_action="ignore").astype("str")


def _from_strings(column: pd.Series[Any], present: pd.Series[bool]) -> pd.Series[Any]:
    """A column of strings as booleans, else numbers, else timestamps, when all of its
    values convert; else as strings."""
    probe = column[present].iloc[:_PROBE].tolist()
    conversions = (
        (_may_be_boolean, _booleans),
        (_may_be_number, _numbers),
        (_may_be_timestamp, _timestamps),
    )
    for may_be, convert in conversions:
        if all(may_be(v) for v in probe):
            converted = convert(column, present)
            if converted is not None:
                return converted
    return column.astype("str")


# Necessary conditions for a value to convert, checked in plain Python on the probe before
# pandas converts anything: a pandas call costs 0.3-1 ms on any column, however short, and
# most text columns fail all three on their first value. Each one only rejects what pandas
# rejects too, so the result is what the pandas conversions alone give (tests compare).
_BOOLEAN_TEXT = frozenset(("true", "false"))
_TIMESTAMP_WORDS = frozenset(("now", "today"))  # what pandas' ISO 8601 parser takes too


def _may_be_boolean(value: Any) -> bool:
    # No character outside ASCII lowers to a letter of "true"/"false" (only the Kelvin
    # and Angstrom signs lower to ASCII-range letters), so Python's lower() and pandas'
    # (pyarrow's) agree on what they turn into "true" or "false".
    return not isinstance(value, str) or value.lower() in _BOOLEAN_TEXT


def _may_be_number(value: Any) -> bool:
    # pandas parses a string as a number only if its C parser (xstrtod) does, and
    # everything that parser takes Python's float() takes too.
    if not isinstance(value, str):
        # Booleans are not numbers here, and lists and objects convert to nothing.
        return not isinstance(value, bool | np.bool_ | list | dict)
    try:
        float(value)
    except ValueError:
        return False
    return True


def _may_be_timestamp(value: Any) -> bool:
    # pandas' ISO 8601 parser skips leading whitespace, then needs a digit or a sign
    # (years may be signed), or takes the words "now" and "today" exactly.
    if not isinstance(value, str):
        return True
    head = value.lstrip()[:1]
    return head.isdigit() or head in ("+", "-") or value in _TIMESTAMP_WORDS


def _booleans(column: pd.Series[Any], present: pd.Series[bool]) -> pd.Series[Any] | None:
    if len(column) <= _PROBE_ABOVE:
        return _small_booleans(column, present)
    values = column[present].astype("str").str.lower()
    if not values.iloc[:_PROBE].isin(("true", "false")).all():
        return None
    if not values.isin(("true", "false")).all():
        return None
    result = pd.Series(pd.NA, index=column.index, dtype="boolean")
    result[present] = (values == "true").to_numpy()
    return result


def _small_booleans(column: pd.Series[Any], present: pd.Series[bool]) -> pd.Series[Any] | None:
    # _booleans in plain Python for a short column (a few pandas calls cost more than the
    # loop): the same test (see _may_be_boolean for why Python's lower() agrees).
    mask = ~present.to_numpy()
    truth = np.zeros(len(column), dtype=bool)
    for position, value in enumerate(column.tolist()):
        if mask[position]:
            continue
        lowered = str(value).lower()
        if lowered not in _BOOLEAN_TEXT:
            return None
        truth[position] = lowered == "true"
    return pd.Series(pd.arrays.BooleanArray(truth, mask), index=column.index)


def as_numbers(column: pd.Series[Any]) -> pd.Series[Any] | None:
    """The column as numbers when every non-null value is a finite number (or a string
    of one, but not a boolean); None otherwise. Null-only columns are not numbers."""
    dtype = column.dtype
    if pd.api.types.is_bool_dtype(dtype):
        return None
    if pd.api.types.is_numeric_dtype(dtype):
        return column if column.notna().any() else None
    present = column.notna()
    if not present.any() or pd.api.types.is_datetime64_any_dtype(dtype):
        return None
    return _numbers(column, present)


def _numbers(column: pd.Series[Any], present: pd.Series[bool]) -> pd.Series[Any] | None:
    if not all(_may_be_number(v) for v in column[present].iloc[:_PROBE].tolist()):
        return None
    probing = len(column) > _PROBE_ABOVE
    if probing and not _all_finite(pd.to_numeric(column[present].iloc[:_PROBE], errors="coerce")):
        return None
    values = column.map(_no_bool, na_action="ignore")  # True would convert to 1
    converted = pd.to_numeric(values, errors="coerce")
    if not _all_finite(converted[present]):
        return None
    return converted


def _timestamps(
    column: pd.Series[Any], present: pd.Series[bool] | None = None
) -> pd.Series[Any] | None:
    if present is None:  # already datetimes: only the unit and zone change
        parsed = pd.to_datetime(column, utc=True)
    else:
        if len(column) > _PROBE_ABOVE:
            probe = pd.to_datetime(
                column[present].iloc[:_PROBE], utc=True, format="ISO8601", errors="coerce"
            )
            if probe.isna().any():
                return None
        parsed = pd.to_datetime(column, utc=True, format="ISO8601", errors="coerce")
        if parsed[present].isna().any():
            return None
    try:
        return parsed.astype(TIMESTAMP_DTYPE)
    except (OverflowError, ValueError):  # outside the years 1677..2262 that ns can hold
        return None if present is not None else parsed


def _all_finite(values: pd.Series[Any]) -> bool:
    array = values.to_numpy(dtype=np.float64, na_value=np.nan)
    return bool(np.isfinite(array).all())


def _no_bool(value: Any) -> Any:
    return None if isinstance(value, bool | np.bool_) else value


# json.dumps(value, default=str, ensure_ascii=False), without building an encoder per
# value: 40% less time on a column of lists (100,000 of them in the bigjob's "tags").
_json_text = json.JSONEncoder(default=str, ensure_ascii=False).encode


def _as_text(value: Any) -> str:
    """A JSON value as text: strings as they are, the rest as JSON (``1.0`` as ``1``,
    the same number in JSON, so that a value reads the same whichever way it came)."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool | np.bool_):
        return "true" if value else "false"
    if isinstance(value, int | np.integer):
        return str(int(value))
    if isinstance(value, float | np.floating):
        number = float(value)
        return str(int(number)) if number.is_integer() else repr(number)
    if isinstance(value, pd.Timestamp):
        return value.isoformat()
    try:
        return _json_text(value)
    except (TypeError, ValueError):
        return str(value)


tabular = Tabular()
