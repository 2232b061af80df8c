"""``anomalies``: outlying values per numeric column, or outlying rows.

``robust_z`` (default), per numeric column: the modified z-score of Iglewicz and Hoaglin,
``0.6745 * (x - median) / MAD`` with ``MAD = median(|x - median|)``; a value is
anomalous when ``|z| > threshold`` (3.5 by default). When MAD is 0 (over half the values
are equal) the score falls back to ``(x - median) / (1.253314 * meanAD)``, the scale
that makes it comparable for normal data; a constant column has no anomalies. Nulls are
skipped.

``isolation_forest``: scikit-learn's IsolationForest fitted on all numeric columns
together (nulls replaced by the column median), reporting the rows it predicts as
outliers; ``contamination`` and ``random_state`` are passed through, so a run is
reproducible.

Indexes are row positions in the dataset (0-based).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import numpy as np
import pandas as pd
from pydantic import Field
from sklearn.ensemble import IsolationForest

from celeriac.workers.compute.plugin import Analyzer, Parameters, float_list, numeric_columns

MAD_SCALE = 0.6745
MEAN_AD_SCALE = 1.253314


class AnomaliesParameters(Parameters):
    """Parameters of the ``anomalies`` analyzer."""

    method: Literal["robust_z", "isolation_forest"] = Field(
        default="robust_z", description="Per-column robust z-score, or IsolationForest on rows."
    )
    threshold: float = Field(
        default=3.5,
        gt=0,
        description="robust_z: |modified z-score| above which a value is anomalous.",
    )
    contamination: Literal["auto"] | Annotated[float, Field(gt=0, le=0.5)] = Field(
        default="auto", description="isolation_forest: expected share of outliers."
    )
    n_estimators: int = Field(default=100, ge=1, le=1000, description="isolation_forest: trees.")
    random_state: int = Field(default=0, ge=0, description="isolation_forest: seed.")


class Anomalies(Analyzer[AnomaliesParameters]):
    """Outliers by robust (median/MAD) z-score per column, or by IsolationForest."""

    name = "anomalies"
    version = "1.0.0"
    description = "Anomalous values per numeric column by robust z-score (median/MAD), or "
    "anomalous rows by IsolationForest."
    parameters = AnomaliesParameters
    accepts = ("table", "timeseries")

    def analyze(self, dataset: pd.DataFrame, params: AnomaliesParameters) -> dict[str, Any]:
        """Robust z: ``{"columns": {column: {"indexes", "scores", ...}}, "count"}``;
        IsolationForest: ``{"features", "indexes", "scores", "count"}``."""
        columns = numeric_columns(dataset)
        if params.method == "isolation_forest":
            return isolation_forest(dataset, columns, params)
        result: dict[str, Any] = {
            "method": "robust_z",
            "threshold": params.threshold,
            "rows": len(dataset),
            "columns": {},
            "count": 0,
        }
        for column in columns:
            values = dataset[column].to_numpy(dtype=np.float64, na_value=np.nan)
            found = robust_z_outliers(values, params.threshold)
            result["columns"][column] = found
            result["count"] += found["count"]
        return result


def robust_z_scores(
    values: np.ndarray[Any, np.dtype[np.float64]],
) -> tuple[np.ndarray[Any, np.dtype[np.float64]], float, float]:
    """Modified z-scores of ``values`` (NaN stays NaN), the median and the MAD."""
    present = values[~np.isnan(values)]
    if present.size == 0:
        return np.full_like(values, np.nan), float("nan"), float("nan")
    median = float(np.median(present))
    deviations = np.abs(values - median)
    mad = float(np.median(np.abs(present - median)))
    if mad > 0:
        return MAD_SCALE * (values - median) / mad, median, mad
    mean_ad = float(np.mean(np.abs(present - median)))
    if mean_ad > 0:
        return (values - median) / (MEAN_AD_SCALE * mean_ad), median, mad
    return np.where(np.isnan(deviations), np.nan, 0.0), median, mad


def robust_z_outliers(
    values: np.ndarray[Any, np.dtype[np.float64]], threshold: float
) -> dict[str, Any]:
    """The positions and scores of values with ``|z| > threshold``."""
    scores, median, mad = robust_z_scores(values)
    with np.errstate(invalid="ignore"):
        (positions,) = np.nonzero(np.abs(scores) > threshold)
    return {
        "count": int(positions.size),
        "indexes": positions.tolist(),
        "scores": float_list(scores[positions]),
        "median": float_list([median])[0],
        "mad": float_list([mad])[0],
    }


def isolation_forest(
    dataset: pd.DataFrame, columns: list[str], params: AnomaliesParameters
) -> dict[str, Any]:
    """Rows that IsolationForest predicts as outliers, with their decision scores
    (negative; lower is more anomalous)."""
    result: dict[str, Any] = {
        "method": "isolation_forest",
        "contamination": params.contamination,
        "rows": len(dataset),
        "features": columns,
        "count": 0,
        "indexes": [],
        "scores": [],
    }
    matrix = feature_matrix(dataset, columns)
    if matrix.shape[0] < 2 or matrix.shape[1] == 0:
        return result
    forest = IsolationForest(
        n_estimators=params.n_estimators,
        contamination=params.contamination,
        random_state=params.random_state,
    ).fit(matrix)
    scores = forest.decision_function(matrix)
    (positions,) = np.nonzero(forest.predict(matrix) == -1)
    result.update(
        count=int(positions.size), indexes=positions.tolist(), scores=float_list(scores[positions])
    )
    return result


def feature_matrix(dataset: pd.DataFrame, columns: list[str]) -> np.ndarray[Any, Any]:
    """The numeric columns as a float matrix, nulls replaced by the column median
    (a column of nulls only becomes 0)."""
    frame = dataset[columns].astype(np.float64)
    return frame.fillna(frame.median().fillna(0.0)).to_numpy()


anomalies = Anomalies()
