"""``summary``: descriptive statistics of every column.

Numeric columns (booleans excluded, as in ``DataFrame.describe``) get ``count``,
``mean``, ``std`` (sample, ddof=1), ``min``, ``p25``, ``p50``, ``p75`` (linear
interpolation) and ``max``, exactly the numbers of ``describe()``, plus ``nulls``. Every
other column gets ``count``, ``nulls`` and ``distinct`` (nulls not counted), the most
frequent value ``top`` with its ``freq``, and for timestamps ``min``/``max`` (ISO 8601).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from celeriac.workers.compute.plugin import (
    Analyzer,
    NoParameters,
    float_list,
    json_safe,
    numeric_columns,
)

STATISTICS = ("count", "mean", "std", "min", "p25", "p50", "p75", "max")


class Summary(Analyzer[NoParameters]):
    """Descriptive statistics: describe() for numbers, nulls/distinct for the rest."""

    name = "summary"
    version = "1.0.0"
    description = "Descriptive statistics per column: count, mean, std, min, quartiles, "
    "max for numbers; nulls, distinct values and the most frequent value for the rest."
    parameters = NoParameters
    accepts = ("table", "timeseries")

    # ARG002: the Analyzer interface's signature
    def analyze(self, dataset: pd.DataFrame, params: NoParameters) -> dict[str, Any]:  # noqa: ARG002
        """``{"rows", "numeric": {column: stats}, "other": {column: stats}}``."""
        numeric = numeric_columns(dataset)
        nulls = dataset.isna().sum()
        result: dict[str, Any] = {"rows": len(dataset), "numeric": {}, "other": {}}
        for column in numeric:
            present = dataset[column].to_numpy(dtype=np.float64, na_value=np.nan)
            present = present[~np.isnan(present)]
            values = dict(zip(STATISTICS, float_list(describe(present)), strict=True))
            values["count"] = int(present.size)
            values["nulls"] = int(nulls[column])
            result["numeric"][column] = values
        for column in dataset.columns:
            if column in numeric:
                continue
            result["other"][str(column)] = _other(dataset[column], int(nulls[column]))
        return result


def describe(present: np.ndarray[Any, np.dtype[np.float64]]) -> list[float]:
    """``Series.describe()``'s numbers for the non-null values ``present``, in the order
    of STATISTICS: the same formulas in numpy (sample std, linear quantiles), since
    ``DataFrame.describe`` costs about 1 ms a column in pandas' own overhead, most of a
    small dataset's summary (the tests compare the two)."""
    count = present.size
    if count == 0:
        return [0.0] + [float("nan")] * 7
    with np.errstate(invalid="ignore", over="ignore"):  # infinities give NaN: fine
        quartiles = np.percentile(present, (25, 50, 75))
        std = float(np.std(present, ddof=1)) if count > 1 else float("nan")
        return [
            float(count),
            float(np.mean(present)),
            std,
            float(present.min()),
            *map(float, quartiles),
            float(present.max()),
        ]


def _other(column: pd.Series[Any], nulls: int) -> dict[str, Any]:
    # No copy of a column without nulls: of a 1,000,000-record text column, that is 90 MiB
    # more at the analysis' peak for the same values.
    values = column.dropna() if nulls else column
    try:
        counts = values.value_counts(sort=True)
    except TypeError:  # unhashable values (lists, dicts) from a third-party generator
        counts = values.astype("str").value_counts(sort=True)
    stats: dict[str, Any] = {
        "count": len(values),
        "nulls": nulls,
        "distinct": len(counts),
        "top": json_safe(counts.index[0]) if len(counts) else None,
        "freq": int(counts.iloc[0]) if len(counts) else 0,
    }
    if pd.api.types.is_datetime64_any_dtype(column.dtype):
        stats["min"] = json_safe(values.min()) if len(values) else None
        stats["max"] = json_safe(values.max()) if len(values) else None
    return stats


summary = Summary()
