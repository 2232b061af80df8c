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

    def analyze(self, dataset: pd.DataFrame, params: NoParameters) -> dict[str, Any]:
        """``{"rows", "numeric": {column: stats}, "other": {column: stats}}``."""
        numeric = numeric_columns(dataset)
        nulls = dataset.isna().sum()
        result: dict[str, Any] = {"rows": len(dataset), "numeric": {}, "other": {}}
        if numeric:
            with np.errstate(invalid="ignore"):  # infinities make NaN statistics: fine
                described = dataset[numeric].astype(np.float64).describe()
            for column in numeric:
                values = dict(zip(STATISTICS, float_list(described[column]), strict=True))
                values["count"] = int(described[column]["count"])
                values["nulls"] = int(nulls[column])
                result["numeric"][column] = values
        for column in dataset.columns:
            if column in numeric:
                continue
            result["other"][str(column)] = _other(dataset[column], int(nulls[column]))
        return result


def _other(column: pd.Series[Any], nulls: int) -> dict[str, Any]:
    values = column.dropna()
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
