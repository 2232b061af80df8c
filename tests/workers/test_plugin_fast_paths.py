"""The short cuts that make a small job's plugin work cheap give what pandas gives.

``tabular`` rejects conversions in plain Python before pandas runs, converts short
columns without a probe, and combines a single chunk without concatenating; ``summary``
computes ``describe()``'s numbers with numpy. Each is checked here against pandas directly,
on short columns (the new paths) and on long ones (the probed paths), on values chosen to
sit at the edges of what pandas parses.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from pandas.testing import assert_frame_equal, assert_series_equal

from celeriac.workers.compute import analyze_dataset, build_dataset, get_registry
from celeriac.workers.compute.plugins.tabular import as_numbers, infer_column

SAMPLE = Path(__file__).resolve().parent.parent / "data" / "sample_1000.ndjson"

# Strings at the edges of pandas' boolean, number and ISO 8601 parsing: some convert,
# some do not, some only in one of the three.
EDGE_COLUMNS: list[list[str | None]] = [
    ["TRUE", "false", None, "True"],
    ["True ", "false"],
    ["1_000", "2"],
    [" 12 ", "3", None],
    ["1e5", "+.5", "1."],
    ["\u0661\u0662", "1"],
    ["infinity", "1"],
    ["Now", "2024-01-01"],
    [" now", "2024-01-01"],
    [" 2024-01-01", "2024-03-02T03:15:07+02:00"],
    ["-2024", "2024"],
    ["2024-03-06", None, "2024-03-02"],
    ["C0011", "C0012"],
    ["NaT", "2024-01-01"],
    ["", "1"],
    ["0x10", "1"],
    ["\u0130", "true"],
    ["berlin", "Lyon", None],
]


def _reference(values: pd.Series[Any]) -> pd.Series[Any]:
    """What ``infer_column`` does to a column of strings, in pandas calls only."""
    present = values.notna()
    lowered = values[present].astype("str").str.lower()
    if lowered.isin(("true", "false")).all():
        result = pd.Series(pd.NA, index=values.index, dtype="boolean")
        result[present] = (lowered == "true").to_numpy()
        return result
    numbers = pd.to_numeric(values, errors="coerce")
    if np.isfinite(numbers[present].to_numpy(dtype=np.float64, na_value=np.nan)).all():
        return numbers
    stamps = pd.to_datetime(values, utc=True, format="ISO8601", errors="coerce")
    if not stamps[present].isna().any():
        try:
            return stamps.astype("datetime64[ns, UTC]")
        except (OverflowError, ValueError):
            pass
    return values.astype("str")


@pytest.mark.parametrize("repeat", [1, 400], ids=["short", "long"])
@pytest.mark.parametrize("values", EDGE_COLUMNS, ids=lambda v: repr(v)[:40])
def test_infer_column_converts_as_pandas_does(values: list[str | None], repeat: int) -> None:
    column = pd.Series(values * repeat, dtype="str")
    assert_series_equal(infer_column(column), _reference(column))


@pytest.mark.parametrize("repeat", [1, 400], ids=["short", "long"])
def test_now_and_today_are_timestamps_as_in_pandas(repeat: int) -> None:
    # Their values depend on the clock, so only the type is compared.
    column = pd.Series(["now", "2024-01-01", "today"] * repeat, dtype="str")
    assert str(infer_column(column).dtype) == str(_reference(column).dtype)
    assert str(_reference(column).dtype) == "datetime64[ns, UTC]"


@pytest.fixture(scope="module")
def records() -> list[dict[str, Any]]:
    return [json.loads(line) for line in SAMPLE.read_text(encoding="utf-8").splitlines()]


def _through_parquet(frame: pd.DataFrame) -> pd.DataFrame:
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    return pd.read_parquet(io.BytesIO(buffer.getvalue()))


@pytest.mark.parametrize("size", [100, 1000])
def test_one_chunk_combines_as_several_do(records: list[dict[str, Any]], size: int) -> None:
    generator = get_registry().dataset("tabular")
    params = generator.parse_params({})
    rows = records[:size]
    one = generator.combine([_through_parquet(generator.generate(rows, params))], params)
    halves = [rows[: size // 2], rows[size // 2 :]]
    two = generator.combine(
        [_through_parquet(generator.generate(h, params)) for h in halves], params
    )
    assert_frame_equal(one, two)


def test_summary_statistics_are_describes_on_small_and_awkward_columns(
    records: list[dict[str, Any]],
) -> None:
    dataset = build_dataset("tabular", [records[:100]]).assign(
        empty=pd.Series([np.nan] * 100, dtype=np.float64),
        single=pd.Series([np.nan] * 99 + [4.0], dtype=np.float64),
        infinite=pd.Series([np.inf, -np.inf] + [1.0] * 98, dtype=np.float64),
        nullable=pd.array([1, None] * 50, dtype="Int64"),
    )
    result = analyze_dataset("summary", dataset, kind="table")
    described = dataset[list(result["numeric"])].astype(np.float64).describe()
    names = {"p25": "25%", "p50": "50%", "p75": "75%"}
    for column, stats in result["numeric"].items():
        for statistic in ("count", "mean", "std", "min", "p25", "p50", "p75", "max"):
            theirs = float(described.loc[names.get(statistic, statistic), column])
            ours = stats[statistic]
            if not np.isfinite(theirs):  # NaN and infinities are null in JSON results
                assert ours is None, (column, statistic)
            else:
                assert ours == pytest.approx(theirs, rel=1e-12), (column, statistic)
    assert result["numeric"]["empty"]["count"] == 0
    assert result["numeric"]["single"]["count"] == 1


OBJECT_COLUMNS: list[list[Any]] = [
    [1, "2", 3.5, None],
    [1, True, 2],
    ["1", [1, 2], "3"],
    [{"a": 1}, 2],
    ["C0011", 1],
    [" 12 ", "1e5", 7],
    [np.bool_(True), 1.0],
]


def _numbers_reference(column: pd.Series[Any]) -> pd.Series[Any] | None:
    present = column.notna()
    values = column.map(lambda v: None if isinstance(v, bool | np.bool_) else v)
    converted = pd.to_numeric(values, errors="coerce")
    finite = np.isfinite(converted[present].to_numpy(dtype=np.float64, na_value=np.nan))
    return converted if present.any() and finite.all() else None


@pytest.mark.parametrize("repeat", [1, 400], ids=["short", "long"])
@pytest.mark.parametrize("values", OBJECT_COLUMNS, ids=lambda v: repr(v)[:40])
def test_as_numbers_on_mixed_values_is_pandas_to_numeric(values: list[Any], repeat: int) -> None:
    column = pd.Series(values * repeat, dtype=object)
    expected = _numbers_reference(column)
    found = as_numbers(column)
    if expected is None:
        assert found is None
    else:
        assert found is not None
        assert_series_equal(found, expected)
