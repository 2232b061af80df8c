"""``keywords``: the top terms of a text dataset by TF-IDF.

scikit-learn's ``TfidfVectorizer`` (lowercased, ``(?u)\\b\\w\\w+\\b`` tokens, smooth idf,
l2-normalised rows) is fitted on every text of the dataset; a term's score is its TF-IDF
summed (or averaged) over the documents, and the ``top_k`` highest are returned, ties
broken alphabetically. Null texts count as empty documents.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import Field, field_validator
from sklearn.feature_extraction.text import TfidfVectorizer

from celeriac.workers.compute.plugin import Analyzer, DatasetError, Parameters, float_list


class KeywordsParameters(Parameters):
    """Parameters of the ``keywords`` analyzer."""

    column: str = Field(default="text", min_length=1, description="The column with the text.")
    top_k: int = Field(default=10, ge=1, le=1000, description="How many terms to return.")
    max_features: int = Field(
        default=5000, ge=1, le=1_000_000, description="Vocabulary size (most frequent terms)."
    )
    ngram_range: tuple[int, int] = Field(
        default=(1, 1), description="Smallest and largest n-gram, e.g. [1, 2]."
    )
    stop_words: Literal["english"] | None = Field(
        default="english", description="Stop words to drop ('english' or null for none)."
    )
    aggregate: Literal["sum", "mean"] = Field(
        default="sum", description="How a term's TF-IDF combines over documents."
    )

    @field_validator("ngram_range")
    @classmethod
    def _ordered_ngrams(cls, value: tuple[int, int]) -> tuple[int, int]:
        low, high = value
        if not 1 <= low <= high <= 5:
            raise ValueError("ngram_range must be [min, max] with 1 <= min <= max <= 5")
        return value


class Keywords(Analyzer[KeywordsParameters]):
    """Top terms by TF-IDF summed (or averaged) over documents."""

    name = "keywords"
    version = "1.0.0"
    description = "Top terms of the texts by TF-IDF (scikit-learn), summed or averaged over "
    "documents."
    parameters = KeywordsParameters
    accepts = ("text",)

    def analyze(self, dataset: pd.DataFrame, params: KeywordsParameters) -> dict[str, Any]:
        """``{"documents", "vocabulary", "terms": [{"term", "score"}, ...]}``."""
        if params.column not in dataset.columns:
            raise DatasetError(f"keywords: the dataset has no column {params.column!r}")
        texts = dataset[params.column].fillna("").astype("str")
        result: dict[str, Any] = {"documents": len(texts), "vocabulary": 0, "terms": []}
        vectorizer = TfidfVectorizer(
            max_features=params.max_features,
            ngram_range=params.ngram_range,
            stop_words=params.stop_words,
        )
        try:
            # One text at a time (the vectorizer reads them once), not a list of them all
            # beside the dataset: 1,000,000 Python strings are about 100 MiB.
            matrix = vectorizer.fit_transform(iter(texts))
        except ValueError as exc:
            if "empty vocabulary" in str(exc):  # no text has a term left
                return result
            raise
        scores = np.asarray(matrix.sum(axis=0), dtype=np.float64).ravel()
        if params.aggregate == "mean":
            scores /= matrix.shape[0]
        terms = vectorizer.get_feature_names_out()
        order = np.lexsort((terms, -scores))[: params.top_k]
        result["vocabulary"] = len(terms)
        result["terms"] = [
            {"term": str(term), "score": score}
            for term, score in zip(terms[order], float_list(scores[order]), strict=True)
        ]
        return result


keywords = Keywords()
