"""``sentiment``: VADER sentiment of every text, with the share of each polarity.

The lexicon (``vaderSentiment``'s ``vader_lexicon.txt`` and emoji lexicon, shipped
inside the package) is read once per process in ``load``, which the compute worker runs
at process start; ``loads`` counts how often that happened in this process. Scores are
VADER's ``compound``, ``pos``, ``neu`` and ``neg``; a text is positive when ``compound >=
0.05``, negative when ``<= -0.05``, neutral otherwise (VADER's published thresholds).
Each distinct text is scored once, and null texts get null scores and are not counted.

VADER is pure Python, ~30-65 us per short text (6.5 s for 100,000 texts of 16 words on
one core), the slowest step of a pipeline by far; the analyzer is row-wise (``merge``),
so the canvas can score slices of rows in parallel and merge the results.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from pydantic import Field
from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

from celeriac.workers.compute.plugin import Analyzer, DatasetError, Parameters, float_list

logger = logging.getLogger(__name__)

POSITIVE = 0.05
NEGATIVE = -0.05
SCORES = ("compound", "pos", "neu", "neg")


class SentimentParameters(Parameters):
    """Parameters of the ``sentiment`` analyzer."""

    column: str = Field(default="text", min_length=1, description="The column with the text.")
    include_records: bool = Field(
        default=True, description="Include the scores of every record (large for big jobs)."
    )


class Sentiment(Analyzer[SentimentParameters]):
    """VADER compound/pos/neu/neg scores per record, their mean and polarity counts."""

    name = "sentiment"
    version = "1.0.0"
    description = "VADER sentiment per record (compound, pos, neu, neg), the mean compound "
    "score and counts of positive, negative and neutral texts."
    parameters = SentimentParameters
    accepts = ("text",)
    rowwise = True  # the slowest analyzer by far: worth splitting across processes

    def __init__(self) -> None:
        self.loads = 0
        self._vader: SentimentIntensityAnalyzer | None = None

    def load(self) -> None:
        """Read the VADER lexicons (once per process)."""
        self._vader = SentimentIntensityAnalyzer()
        self.loads += 1
        logger.info("sentiment lexicon loaded", extra={"words": len(self._vader.lexicon)})

    def analyze(self, dataset: pd.DataFrame, params: SentimentParameters) -> dict[str, Any]:
        """``{"documents", "mean_compound", "positive", "negative", "neutral",
        "records": {"compound": [...], "pos": [...], "neu": [...], "neg": [...]}}``."""
        if params.column not in dataset.columns:
            raise DatasetError(f"sentiment: the dataset has no column {params.column!r}")
        scores = self.scores(dataset[params.column])
        compound = scores["compound"]
        present = ~np.isnan(compound)
        result: dict[str, Any] = {
            "documents": int(present.sum()),
            "mean_compound": float_list([compound[present].mean()])[0] if present.any() else None,
            "positive": int((compound >= POSITIVE).sum()),
            "negative": int((compound <= NEGATIVE).sum()),
            "neutral": int((present & (compound > NEGATIVE) & (compound < POSITIVE)).sum()),
        }
        if params.include_records:
            result["records"] = {name: float_list(scores[name]) for name in SCORES}
        return result

    def slice_params(self, params: SentimentParameters) -> SentimentParameters:
        """Slices keep every record's scores, whatever the job asked: the merge then
        recomputes the mean from them, exactly as on the whole dataset."""
        return params.model_copy(update={"include_records": True})

    def merge(
        self, results: Sequence[Mapping[str, Any]], params: SentimentParameters
    ) -> dict[str, Any]:
        """The result on the whole dataset from results on consecutive row slices.

        From slices with their records (as ``slice_params`` makes them), everything is
        recomputed from the records: exactly the whole dataset's result, with the records
        only if ``include_records``. From slices without, the mean is the
        document-weighted mean of the slices' means (equal up to floating-point rounding).
        """
        if all("records" in r for r in results):
            records = {name: [v for r in results for v in r["records"][name]] for name in SCORES}
            compound = np.array(records["compound"], dtype=np.float64)
            present = ~np.isnan(compound)
            merged: dict[str, Any] = {
                "documents": int(present.sum()),
                "mean_compound": float(compound[present].mean()) if present.any() else None,
                "positive": sum(int(r["positive"]) for r in results),
                "negative": sum(int(r["negative"]) for r in results),
                "neutral": sum(int(r["neutral"]) for r in results),
            }
            if params.include_records:
                merged["records"] = records
            return merged
        documents = sum(int(r["documents"]) for r in results)
        weighted = sum(r["mean_compound"] * r["documents"] for r in results if r["documents"])
        return {
            "documents": documents,
            "mean_compound": weighted / documents if documents else None,
            "positive": sum(int(r["positive"]) for r in results),
            "negative": sum(int(r["negative"]) for r in results),
            "neutral": sum(int(r["neutral"]) for r in results),
        }

    def scores(self, texts: pd.Series[Any]) -> dict[str, np.ndarray[Any, np.dtype[np.float64]]]:
        """VADER's four scores for every text (NaN for null texts)."""
        self.ensure_loaded()
        assert self._vader is not None
        codes, uniques = pd.factorize(texts, use_na_sentinel=True)
        polarity = self._vader.polarity_scores
        table = np.array(
            [[p[s] for s in SCORES] for p in map(polarity, map(str, uniques))], dtype=np.float64
        ).reshape(len(uniques), len(SCORES))
        # A NaN row at the end, picked by the -1 code of null texts.
        table = np.vstack([table, np.full((1, len(SCORES)), np.nan)])
        picked = table[codes]
        return {name: picked[:, i] for i, name in enumerate(SCORES)}


sentiment = Sentiment()
