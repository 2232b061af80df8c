"""``timeseries``: numeric fields resampled into time bins by a timestamp field.

Chunks cannot be resampled independently and then averaged: a mean of per-chunk means
is wrong when chunks put different numbers of records in a bin. So ``generate`` emits,
per bin and field, the pieces that combine exactly (``sum`` and ``count``, or ``min`` /
``max``), and ``combine`` adds them up bin by bin and only then computes the aggregate
(``mean = sum / count``). Fixed-width bins are aligned to the Unix epoch (``origin="epoch"``;
calendar ones such as ``W`` or ``MS`` to the calendar) so that every chunk cuts the same
bins (bins are computed on naive UTC times, since pandas
ignores the origin for day frequencies on zone-aware times); for frequencies that divide
a day (``15min``, ``1h``, ``1D``) these are the bins of a plain ``DataFrame.resample``.

The dataset has the bin label in a column named after ``timestamp_field``
(``datetime64[ns, UTC]``) and one column per value field, every bin from the first to
the last present (empty bins: null for mean/min/max, 0 for sum/count). ``sum`` is always
a float. Records whose timestamp is missing or unparseable are left out.

With ``value_fields`` unset, the fields are those whose every value is a number (or a
string of one, as ``tabular`` infers them); a field holding anything else in any record
is left out, in every chunk alike (each chunk marks it, ``combine`` drops it).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final, Literal

import numpy as np
import pandas as pd
from pandas.tseries.frequencies import to_offset
from pydantic import Field, field_validator

from celeriac.workers.compute.plugin import (
    DatasetError,
    DatasetGenerator,
    Parameters,
    Records,
    records_frame,
)
from celeriac.workers.compute.plugins.tabular import as_numbers

TIMESTAMP_DTYPE: Final = "datetime64[ns, UTC]"
Aggregate = Literal["mean", "sum", "count", "min", "max"]
# The pieces each aggregate is rebuilt from, and how pieces of one bin combine.
PIECES: dict[str, tuple[str, ...]] = {
    "mean": ("sum", "count"),
    "sum": ("sum",),
    "count": ("count",),
    "min": ("min",),
    "max": ("max",),
}
REJECTED = "rejected"  # piece marking a field that is not numeric in some chunk
BIN = "@bin"
RECORDS = "@records"


class TimeseriesParameters(Parameters):
    """Parameters of the ``timeseries`` dataset generator."""

    timestamp_field: str = Field(
        min_length=1,
        description="The record field with the timestamp (ISO 8601 text or epoch "
        "seconds), dotted for nested objects.",
    )
    value_fields: list[str] | None = Field(
        default=None,
        min_length=1,
        description="Numeric fields to aggregate; default: every field holding numbers.",
    )
    freq: str = Field(default="1h", description="Bin width, a pandas offset alias.")
    agg: Aggregate = Field(default="mean", description="How values in a bin combine.")

    @field_validator("freq")
    @classmethod
    def _known_frequency(cls, value: str) -> str:
        try:
            to_offset(value)
        except ValueError:
            raise ValueError(f"{value!r} is not a pandas offset alias such as '1h'") from None
        return value


class Timeseries(DatasetGenerator[TimeseriesParameters]):
    """Numeric fields aggregated into time bins (sum/count carried across chunks)."""

    name = "timeseries"
    version = "1.0.0"
    description = "Numeric fields resampled by a timestamp field into bins of a pandas "
    "frequency, aggregated by mean, sum, count, min or max."
    parameters = TimeseriesParameters
    produces = "timeseries"

    def generate(self, records: Records, params: TimeseriesParameters) -> pd.DataFrame:
        """Per bin, the pieces of the aggregate of each value field (one chunk).

        The partial is flat and Parquet-safe: a ``@bin`` column with the bin labels, a
        ``@records`` column counting the chunk's records per bin (so that bins with no
        values still span the dataset's range), and ``@<piece>:<field>`` columns, such
        as ``@sum:order.amount``; ``@rejected:<field>`` marks a field that is not
        numeric in this chunk.
        """
        frame = records_frame(records)
        ts = params.timestamp_field
        if frame.empty or ts not in frame.columns:
            return pd.DataFrame()
        stamps = _parse_timestamps(frame[ts])
        keep = stamps.notna().to_numpy()
        if not keep.any():
            return pd.DataFrame()
        fields, rejected = _value_fields(frame, params)
        values = pd.DataFrame(fields, index=frame.index)[keep]
        values.insert(0, RECORDS, 1)
        values.index = _naive_utc(stamps[keep])
        resampled = values.resample(params.freq, origin=_origin(params.freq))
        counts = resampled.count()
        bins = pd.DatetimeIndex(counts.index).tz_localize("UTC").astype(TIMESTAMP_DTYPE)
        columns: dict[str, Any] = {BIN: bins, RECORDS: counts[RECORDS].to_numpy()}
        for piece in PIECES[params.agg]:
            aggregated = counts if piece == "count" else getattr(resampled, piece)()
            for field in fields:
                columns[_piece(piece, field)] = aggregated[field].to_numpy()
        for field in rejected:
            columns[_piece(REJECTED, field)] = np.full(len(counts), np.nan)
        return pd.DataFrame(columns)

    def combine(
        self, partials: Sequence[pd.DataFrame], params: TimeseriesParameters
    ) -> pd.DataFrame:
        """The bins of every chunk merged, then the aggregate computed per bin."""
        ts = params.timestamp_field
        frames = [p for p in partials if BIN in p.columns and len(p)]
        pieces = [_parse_piece(str(c)) for f in frames for c in f.columns]
        rejected = {field for piece, field in pieces if piece == REJECTED}
        if params.value_fields is not None:
            fields = list(params.value_fields)
        else:
            fields = list(
                dict.fromkeys(field for piece, field in pieces if field and field not in rejected)
            )
            if frames and not fields:
                raise DatasetError(
                    "timeseries: no field holds only numbers; name them in value_fields"
                )
        if not frames:
            empty = pd.DataFrame({f: pd.Series([], dtype=np.float64) for f in fields})
            empty.insert(0, ts, pd.Series([], dtype=TIMESTAMP_DTYPE))
            return empty
        merged = pd.concat(frames, ignore_index=True, sort=False)
        merged.index = _naive_utc(pd.to_datetime(merged.pop(BIN), utc=True))
        # Re-binning bin labels with the same frequency and origin maps each label to
        # its own bin, merges the pieces of a bin from every chunk, and adds the empty
        # bins in between, as a resample of all the records would.
        rebinned = merged.resample(params.freq, origin=_origin(params.freq))
        sums = rebinned.sum()
        extremes = getattr(rebinned, params.agg)() if params.agg in ("min", "max") else None
        dataset = pd.DataFrame(
            {f: _aggregate(f, params.agg, sums, extremes) for f in fields}, index=sums.index
        )
        dataset.index = pd.DatetimeIndex(sums.index).tz_localize("UTC").astype(TIMESTAMP_DTYPE)
        return dataset.rename_axis(ts).reset_index()


def _origin(freq: str) -> Literal["epoch", "start_day"]:
    # Fixed widths (hours, minutes, days) count from the epoch; calendar offsets (weeks,
    # months, quarters) are anchored to the calendar already and take no origin.
    offset = to_offset(freq)
    fixed = isinstance(offset, pd.offsets.Tick | pd.offsets.Day)
    return "epoch" if fixed else "start_day"  # start_day: pandas' default


def _naive_utc(stamps: pd.Series[Any]) -> pd.DatetimeIndex:
    # Resampling a UTC index without its zone: pandas ignores origin="epoch" for day
    # frequencies on zone-aware indexes, and "2D" bins would then start at each chunk's
    # first day.
    return pd.DatetimeIndex(stamps).tz_convert("UTC").tz_localize(None)


def _piece(piece: str, field: str) -> str:
    return f"@{piece}:{field}"


def _parse_piece(column: str) -> tuple[str, str]:
    """``("sum", "order.amount")`` for ``@sum:order.amount``; ``("records", "")`` for
    ``@records``."""
    piece, _, field = column.removeprefix("@").partition(":")
    return piece, field


def _aggregate(
    field: str, agg: str, sums: pd.DataFrame, extremes: pd.DataFrame | None
) -> pd.Series[Any]:
    first = _piece(PIECES[agg][0], field)
    if first not in sums.columns:  # no chunk had a value of it
        return pd.Series(0.0 if agg in ("sum", "count") else np.nan, index=sums.index)
    if agg == "mean":
        # In numpy: the same IEEE division, without pandas' alignment and masking per call.
        count = sums[_piece("count", field)].to_numpy(dtype=np.float64)
        total = sums[first].to_numpy(dtype=np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            means = np.where(count > 0, total / count, np.nan)
        return pd.Series(means, index=sums.index, dtype=np.float64)
    if agg == "count":
        return sums[first].astype(np.int64)
    if agg == "sum":
        return sums[first].astype(np.float64)
    assert extremes is not None
    return extremes[first].astype(np.float64)


def _parse_timestamps(column: pd.Series[Any]) -> pd.Series[Any]:
    dtype = column.dtype
    if pd.api.types.is_numeric_dtype(dtype) and not pd.api.types.is_bool_dtype(dtype):
        parsed = pd.to_datetime(column, unit="s", utc=True, errors="coerce")
    else:
        parsed = pd.to_datetime(column, utc=True, format="ISO8601", errors="coerce")
    return parsed.astype(TIMESTAMP_DTYPE)


def _value_fields(
    frame: pd.DataFrame, params: TimeseriesParameters
) -> tuple[dict[str, pd.Series[Any]], list[str]]:
    """The values to aggregate in this chunk, and the fields to mark as not numeric."""
    if params.value_fields is not None:
        return {
            f: pd.to_numeric(frame[f], errors="coerce")
            if f in frame.columns
            else pd.Series(np.nan, index=frame.index)
            for f in params.value_fields
        }, []
    fields: dict[str, pd.Series[Any]] = {}
    rejected: list[str] = []
    for name in frame.columns:
        if name == params.timestamp_field:
            continue
        numbers = as_numbers(frame[name])
        if numbers is not None:
            fields[str(name)] = numbers
        elif frame[name].notna().any():
            rejected.append(str(name))
    return fields, rejected


timeseries = Timeseries()
