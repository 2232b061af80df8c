"""An analyzer that lives outside Celeriac: how many rows, optionally per value of a column."""

from __future__ import annotations

from typing import Any

import pandas as pd
from pydantic import Field

from celeriac.workers.compute.plugin import Analyzer, DatasetError, Parameters


class RowCountParameters(Parameters):
    """Parameters of ``row_count``."""

    by: str | None = Field(default=None, description="Count rows per value of this column.")
    top: int = Field(default=20, ge=1, le=1000, description="How many groups to return.")


class RowCount(Analyzer[RowCountParameters]):
    """Counts the rows of any dataset, and the rows per group when ``by`` is given."""

    name = "row_count"
    version = "0.1.0"
    description = "Rows of the dataset, and rows per value of a column."
    parameters = RowCountParameters
    accepts = ("table", "text", "timeseries")

    def analyze(self, dataset: pd.DataFrame, params: RowCountParameters) -> dict[str, Any]:
        """``{"rows": n, "groups": [{"value": v, "rows": n}, ...]}``, largest groups first."""
        result: dict[str, Any] = {"rows": len(dataset)}
        if params.by is not None:
            if params.by not in dataset.columns:
                raise DatasetError(f"row_count: the dataset has no column {params.by!r}")
            counts = dataset[params.by].astype("str").value_counts(dropna=False)
            counts = counts.sort_index(kind="stable").sort_values(ascending=False, kind="stable")
            result["groups"] = [
                {"value": None if pd.isna(value) else str(value), "rows": int(rows)}
                for value, rows in counts.head(params.top).items()
            ]
        return result


row_count = RowCount()
