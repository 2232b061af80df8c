"""The built-in compute plugins on the committed 1,000-record sample, each checked against
pandas, scikit-learn or VADER computed directly from the raw file, and against itself
split into chunks (with partials stored as Parquet, as the canvas stores them)."""

from __future__ import annotations

import io
import itertools
import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from pandas.testing import assert_frame_equal, assert_series_equal
from sklearn.ensemble import IsolationForest
from sklearn.feature_extraction.text import TfidfVectorizer
from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

from celeriac.workers.compute import (
    DatasetError,
    DatasetKindError,
    ParameterError,
    UnknownPlugin,
    analyze_dataset,
    analyze_slice,
    build_dataset,
    get_registry,
    merge_analyses,
    rows_are_records,
)
from celeriac.workers.compute.plugin import flatten_records, json_safe
from celeriac.workers.compute.plugins.text import text_features

SAMPLE = Path(__file__).resolve().parent.parent / "data" / "sample_1000.ndjson"
CHUNKINGS = ([250, 250, 250, 250], [1, 333, 400, 266])
# make_sample.py injects these outliers (record ids, 1-based; positions are ids - 1).
AMOUNT_OUTLIERS = {100, 250, 400, 555, 700, 901}
TEMPERATURE_OUTLIERS = {42, 333, 777, 999}
DESCRIBE = {
    "count": "count",
    "mean": "mean",
    "std": "std",
    "min": "min",
    "p25": "25%",
    "p50": "50%",
    "p75": "75%",
    "max": "max",
}


@pytest.fixture(scope="module")
def records() -> list[dict[str, Any]]:
    return [json.loads(line) for line in SAMPLE.read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def raw(records: list[dict[str, Any]]) -> pd.DataFrame:
    """The sample flattened by pandas directly: the reference for the plugins."""
    return pd.json_normalize(records, sep=".")


@pytest.fixture(scope="module")
def table(records: list[dict[str, Any]]) -> pd.DataFrame:
    return build_dataset("tabular", [records])


@pytest.fixture(scope="module")
def texts(records: list[dict[str, Any]]) -> pd.DataFrame:
    return build_dataset("text", [records])


def _chunks(records: list[dict[str, Any]], sizes: list[int]) -> list[list[dict[str, Any]]]:
    assert sum(sizes) == len(records)
    starts = np.cumsum([0, *sizes])
    return [records[a:b] for a, b in itertools.pairwise(starts)]


def _through_parquet(frame: pd.DataFrame) -> pd.DataFrame:
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    return pd.read_parquet(io.BytesIO(buffer.getvalue()))


def _chunked(
    name: str, records: list[dict[str, Any]], sizes: list[int], params: dict[str, Any] | None = None
) -> pd.DataFrame:
    generator = get_registry().dataset(name)
    parsed = generator.parse_params(params)
    partials = [generator.generate(chunk, parsed) for chunk in _chunks(records, sizes)]
    return generator.combine([_through_parquet(p) for p in partials], parsed)


def _json_round_trip(result: dict[str, Any]) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(json.dumps(result, allow_nan=False))
    return loaded


# --- tabular ----------------------------------------------------------------------------


def test_tabular_flattens_like_json_normalize_and_infers_types(
    table: pd.DataFrame, raw: pd.DataFrame
) -> None:
    assert list(table.columns) == list(raw.columns)
    assert {c: str(t) for c, t in table.dtypes.items()} == {
        "id": "int64",
        "timestamp": "datetime64[ns, UTC]",
        "active": "boolean",
        "verified": "boolean",
        "rating": "float64",
        "tags": "str",
        "shipped_at": "datetime64[ns, UTC]",
        "text": "str",
        "customer.id": "str",
        "customer.segment": "str",
        "customer.address.city": "str",
        "customer.address.country": "str",
        "order.amount": "float64",
        "order.quantity": "int64",
        "order.discount": "float64",
        "sensor.temperature": "float64",
        "sensor.pressure": "float64",
    }
    for column in (
        "id",
        "rating",
        "order.amount",
        "order.quantity",
        "order.discount",
        "sensor.temperature",
    ):
        assert_series_equal(table[column], raw[column], check_dtype=False)
    assert_series_equal(table["sensor.pressure"], pd.to_numeric(raw["sensor.pressure"]))
    stamps = pd.to_datetime(raw["timestamp"], utc=True, format="ISO8601")
    assert_series_equal(table["timestamp"], stamps.astype("datetime64[ns, UTC]"))
    assert table["timestamp"].iloc[1] == pd.Timestamp("2024-03-03T05:08:51Z")  # +02:00 in
    shipped = pd.to_datetime(raw["shipped_at"], utc=True).astype("datetime64[ns, UTC]")
    assert_series_equal(table["shipped_at"], shipped)
    assert table["verified"].tolist() == (raw["verified"].str.lower() == "true").tolist()
    assert table["active"].tolist() == raw["active"].tolist()
    assert table["tags"].tolist() == [json.dumps(t) for t in raw["tags"]]
    assert table["text"].isna().sum() == raw["text"].isna().sum() > 0


def test_flattening_is_json_normalize(records: list[dict[str, Any]], raw: pd.DataFrame) -> None:
    assert_frame_equal(flatten_records(records), raw)
    awkward = [
        {"a": {"b": {"c": 1}, "d": []}, "e": {}, "f": [{"g": 1}], "h": None},
        {},
        {"a.b.c": "literal dotted key", "a": {"b": {"c": 2}}, "z": {"y": {}}},
        {"a": 1, "n": {"1": True}},
    ]
    assert_frame_equal(flatten_records(awkward), pd.json_normalize(awkward, sep="."))


def test_tabular_parameters_select_columns_and_limit_depth(
    records: list[dict[str, Any]],
) -> None:
    picked = build_dataset(
        "tabular", [records], {"columns": ["order.amount", "customer.segment", "nope"]}
    )
    assert list(picked.columns) == ["order.amount", "customer.segment", "nope"]
    assert picked["nope"].isna().all()
    assert picked["order.amount"].dtype == np.float64
    shallow = build_dataset("tabular", [records[:3]], {"max_depth": 0})
    assert "customer" in shallow.columns
    assert "customer.segment" not in shallow.columns
    assert json.loads(shallow["customer"].iloc[0]) == records[0]["customer"]


def test_tabular_types_do_not_depend_on_where_chunks_are_cut() -> None:
    # Per chunk, "v" would be numbers in the first and text in the second, "b" booleans
    # in one and strings in another; only the whole column decides.
    nasty = [
        {"v": "1", "b": True, "m": 1, "l": [1], "t": "2024-01-01"},
        {"v": "n/a", "b": "true", "m": "x", "l": None, "t": None},
        {"v": 2, "b": None, "m": 2.0, "l": {"a": 1}, "t": "2024-01-02T00:00:00+01:00"},
        {"x": {"y": None}},
        {"m": None, "b": "FALSE", "n": 3},
    ]
    whole = build_dataset("tabular", [nasty])
    assert whole["v"].tolist() == ["1", "n/a", "2", None, None] or whole["v"].dtype == "str"
    assert whole["b"].tolist() == [True, True, pd.NA, pd.NA, False]
    assert whole["t"].dtype == "datetime64[ns, UTC]"
    assert whole["m"].tolist()[:3] == ["1", "x", "2"]
    for size in range(1, len(nasty)):
        sizes = [size] * (len(nasty) // size) + ([len(nasty) % size] if len(nasty) % size else [])
        assert_frame_equal(_chunked("tabular", nasty, sizes), whole)


# --- text -------------------------------------------------------------------------------

WORD = re.compile(r"\w+(?:['\u2019]\w+)*")
SENTENCE = re.compile(r"[^.!?\s][^.!?]*(?:[.!?]+|$)")


def _features_by_regex(value: object) -> list[float]:
    text = value if isinstance(value, str) else ""
    words = len(WORD.findall(text))
    letters = sum(c.isalpha() for c in text)
    nan = math.nan
    return [
        len(text),
        words,
        len(SENTENCE.findall(text)),
        len(re.findall(r"\w", text)) / words if words else nan,
        sum(c.isupper() for c in text) / letters if letters else nan,
        len(re.findall(r"\d", text)) / len(text) if text else nan,
    ]


def test_text_features_match_regular_expressions_per_record(
    texts: pd.DataFrame, raw: pd.DataFrame
) -> None:
    expected = pd.DataFrame(
        [_features_by_regex(t) for t in raw["text"].tolist()],
        columns=[
            "chars",
            "words",
            "sentences",
            "mean_word_length",
            "uppercase_ratio",
            "digit_ratio",
        ],
    )
    assert texts["text"].tolist() == raw["text"].tolist()
    assert_frame_equal(texts.drop(columns="text"), expected, check_dtype=False)
    assert texts["sentences"].max() == 3
    assert texts["digit_ratio"].max() > 0
    assert texts.loc[raw["text"].isna(), "words"].eq(0).all()


def test_text_features_on_awkward_texts() -> None:
    awkward = [
        "",
        "...",
        "don't stop",
        "'quoted' words",
        "rock'n'roll!!",
        "L\u2019\u00e9t\u00e9",
        "ÉCOLE été 3.5 stars?! ok",
        "a\nb. c",
        "  . . ",
        "x_y 12",
        "Σίσυφος ΑΒΓ",
        "ﬁne ½ ²",
        None,
        "trailing",
        "ab'",
        "'",
        "\U0001d400\U0001d41a 🙂",
    ]
    got = text_features(pd.Series(awkward, dtype="str"))
    expected = [_features_by_regex(t) for t in awkward]
    assert_frame_equal(
        got.drop(columns="text"), pd.DataFrame(expected, columns=got.columns[1:]), check_dtype=False
    )


def test_text_field_parameter_and_default(records: list[dict[str, Any]]) -> None:
    nested = [{"review": {"body": r["text"]}, "n": 1} for r in records[:20]]
    by_path = build_dataset("text", [nested], {"field": "review.body"})
    assert by_path["text"].tolist() == [r["text"] for r in records[:20]]
    # No "text" field: the first field holding strings.
    first_string = build_dataset("text", [[{"n": 1, "title": "Hello there.", "x": "y"}]])
    assert first_string["text"].tolist() == ["Hello there."]
    with pytest.raises(DatasetError, match="no record has a string in the field 'missing'"):
        build_dataset("text", [records[:5]], {"field": "missing"})


# --- timeseries -------------------------------------------------------------------------


def _direct_resample(raw: pd.DataFrame, fields: list[str], freq: str, agg: str) -> pd.DataFrame:
    frame = raw[fields].apply(pd.to_numeric)
    frame.index = pd.DatetimeIndex(pd.to_datetime(raw["timestamp"], utc=True, format="ISO8601"))
    return getattr(frame.resample(freq), agg)()


@pytest.mark.parametrize(
    ("freq", "agg"),
    [("1h", "mean"), ("1h", "sum"), ("15min", "count"), ("6h", "max"), ("1D", "min")],
)
def test_timeseries_matches_a_direct_resample(
    records: list[dict[str, Any]], raw: pd.DataFrame, freq: str, agg: str
) -> None:
    fields = ["order.amount", "sensor.temperature", "order.discount"]
    params = {"timestamp_field": "timestamp", "value_fields": fields, "freq": freq, "agg": agg}
    dataset = build_dataset("timeseries", [records], params)
    expected = _direct_resample(raw, fields, freq, agg)
    assert dataset["timestamp"].tolist() == expected.index.tolist()
    assert dataset["timestamp"].dtype == "datetime64[ns, UTC]"
    for field in fields:
        assert dataset[field].to_numpy() == pytest.approx(
            expected[field].to_numpy(dtype=float), rel=1e-12, nan_ok=True
        )
    for sizes in CHUNKINGS:  # a mean of chunk means would fail this
        assert_frame_equal(
            _chunked("timeseries", records, sizes, params), dataset, check_exact=False, rtol=1e-12
        )


def test_timeseries_default_fields_are_the_numeric_ones(
    records: list[dict[str, Any]], raw: pd.DataFrame
) -> None:
    dataset = build_dataset("timeseries", [records], {"timestamp_field": "timestamp"})
    numeric = [
        "id",
        "rating",
        "order.amount",
        "order.quantity",
        "order.discount",
        "sensor.temperature",
        "sensor.pressure",
    ]
    assert list(dataset.columns) == ["timestamp", *numeric]
    expected = _direct_resample(raw, numeric, "1h", "mean")
    assert len(dataset) == len(expected) == 72
    assert dataset["sensor.pressure"].to_numpy() == pytest.approx(
        expected["sensor.pressure"].to_numpy(), rel=1e-12
    )
    # A field numeric in one chunk but not in another is left out whatever the chunking.
    mixed = [
        {"t": "2024-01-01T00:10:00Z", "a": 1, "b": 2},
        {"t": "2024-01-01T01:10:00Z", "a": 3, "b": "oops"},
    ]
    for sizes in ([2], [1, 1]):
        assert list(_chunked("timeseries", mixed, sizes, {"timestamp_field": "t"}).columns) == [
            "t",
            "a",
        ]


@pytest.mark.parametrize("freq", ["7h", "2D", "W", "MS"])
def test_timeseries_bins_do_not_depend_on_chunks_for_any_frequency(
    records: list[dict[str, Any]], freq: str
) -> None:
    # Bins that do not divide a day are aligned to the epoch, calendar ones to the
    # calendar: never to the first record of a chunk.
    params = {"timestamp_field": "timestamp", "value_fields": ["order.amount"], "freq": freq}
    whole = build_dataset("timeseries", [records], params)
    for sizes in CHUNKINGS:
        assert_frame_equal(
            _chunked("timeseries", records, sizes, params), whole, check_exact=False, rtol=1e-12
        )


def test_generators_take_a_dataframe_of_records_too(records: list[dict[str, Any]]) -> None:
    flat = pd.json_normalize(records[:50], sep=".")
    assert_frame_equal(build_dataset("text", [flat]), build_dataset("text", [records[:50]]))
    assert_frame_equal(build_dataset("tabular", [flat]), build_dataset("tabular", [records[:50]]))


# --- summary ----------------------------------------------------------------------------


def test_summary_matches_describe(table: pd.DataFrame, raw: pd.DataFrame) -> None:
    reference = raw.assign(**{"sensor.pressure": pd.to_numeric(raw["sensor.pressure"])})
    described = reference.describe()
    result = _json_round_trip(analyze_dataset("summary", table, kind="table"))
    assert result["rows"] == 1000
    assert sorted(result["numeric"]) == sorted(described.columns)
    for column, stats in result["numeric"].items():
        for ours, theirs in DESCRIBE.items():
            assert stats[ours] == pytest.approx(described.loc[theirs, column], rel=1e-12)
        assert stats["nulls"] == reference[column].isna().sum()
    segment = result["other"]["customer.segment"]
    counts = raw["customer.segment"].value_counts()
    assert segment == {
        "count": 1000,
        "nulls": 0,
        "distinct": raw["customer.segment"].nunique(),
        "top": counts.index[0],
        "freq": int(counts.iloc[0]),
    }
    assert result["other"]["text"]["nulls"] == raw["text"].isna().sum()
    assert result["other"]["tags"]["distinct"] == raw["tags"].map(json.dumps).nunique()
    assert result["other"]["timestamp"]["min"] == "2024-03-01T00:07:29+00:00"
    assert result["other"]["verified"]["distinct"] == 2


# --- anomalies --------------------------------------------------------------------------


def _direct_robust_z(values: np.ndarray[Any, Any], threshold: float) -> tuple[list[int], Any]:
    present = values[~np.isnan(values)]
    median = np.median(present)
    mad = np.median(np.abs(present - median))
    scores = 0.6745 * (values - median) / mad
    (positions,) = np.nonzero(np.abs(np.nan_to_num(scores)) > threshold)
    return positions.tolist(), scores[positions]


@pytest.mark.parametrize("threshold", [3.5, 10.0])
def test_robust_z_anomalies_match_a_direct_computation(
    table: pd.DataFrame, raw: pd.DataFrame, threshold: float
) -> None:
    result = _json_round_trip(
        analyze_dataset("anomalies", table, {"threshold": threshold}, kind="table")
    )
    reference = raw.assign(**{"sensor.pressure": pd.to_numeric(raw["sensor.pressure"])})
    assert set(result["columns"]) == set(reference.describe().columns)
    for column, found in result["columns"].items():
        positions, scores = _direct_robust_z(reference[column].to_numpy(float), threshold)
        assert found["indexes"] == positions, column
        assert found["scores"] == pytest.approx(scores, rel=1e-12)
        assert found["count"] == len(positions)
    assert result["count"] == sum(f["count"] for f in result["columns"].values())
    assert {i + 1 for i in result["columns"]["order.amount"]["indexes"]} >= AMOUNT_OUTLIERS
    assert {i + 1 for i in result["columns"]["sensor.temperature"]["indexes"]} >= (
        TEMPERATURE_OUTLIERS
    )


@pytest.mark.parametrize("contamination", ["auto", 0.01])
def test_isolation_forest_matches_scikit_learn(
    table: pd.DataFrame, contamination: str | float
) -> None:
    params = {"method": "isolation_forest", "contamination": contamination, "random_state": 7}
    result = _json_round_trip(analyze_dataset("anomalies", table, params, kind="table"))
    features = [
        "id",
        "rating",
        "order.amount",
        "order.quantity",
        "order.discount",
        "sensor.temperature",
        "sensor.pressure",
    ]
    assert result["features"] == features
    matrix = table[features].astype(float)
    matrix = matrix.fillna(matrix.median()).to_numpy()
    forest = IsolationForest(contamination=contamination, random_state=7).fit(matrix)
    (expected,) = np.nonzero(forest.predict(matrix) == -1)
    assert result["indexes"] == expected.tolist()
    assert result["scores"] == pytest.approx(forest.decision_function(matrix)[expected])
    if contamination == 0.01:
        assert result["count"] == 10
        assert {i + 1 for i in result["indexes"]} & (AMOUNT_OUTLIERS | TEMPERATURE_OUTLIERS)


def test_robust_z_falls_back_to_mean_absolute_deviation() -> None:
    # Over half the values equal: MAD is 0; the score uses 1.253314 * meanAD instead.
    values = [5.0] * 8 + [6.0, 50.0]
    frame = pd.DataFrame({"x": values, "constant": [1.0] * 10, "empty": [np.nan] * 10})
    result = _json_round_trip(analyze_dataset("anomalies", frame))
    mean_ad = np.mean(np.abs(np.array(values) - 5.0))
    assert result["columns"]["x"]["indexes"] == [9]
    assert result["columns"]["x"]["scores"] == pytest.approx([45 / (1.253314 * mean_ad)])
    assert result["columns"]["constant"]["count"] == 0
    assert result["columns"]["empty"] == {
        "count": 0,
        "indexes": [],
        "scores": [],
        "median": None,
        "mad": None,
    }


# --- sentiment and keywords -------------------------------------------------------------


def test_sentiment_matches_vader(texts: pd.DataFrame, raw: pd.DataFrame) -> None:
    result = _json_round_trip(analyze_dataset("sentiment", texts, kind="text"))
    vader = SentimentIntensityAnalyzer()
    expected = [vader.polarity_scores(t) if isinstance(t, str) else None for t in raw["text"]]
    for score in ("compound", "pos", "neu", "neg"):
        assert result["records"][score] == [e[score] if e else None for e in expected]
    compounds = np.array([e["compound"] for e in expected if e])
    assert result["documents"] == len(compounds) == 1000 - raw["text"].isna().sum()
    assert result["mean_compound"] == pytest.approx(compounds.mean(), rel=1e-12)
    assert result["positive"] == (compounds >= 0.05).sum() > 100
    assert result["negative"] == (compounds <= -0.05).sum() > 100
    assert result["neutral"] == ((compounds > -0.05) & (compounds < 0.05)).sum() > 50
    brief = analyze_dataset("sentiment", texts, {"include_records": False})
    assert "records" not in brief
    assert brief["positive"] == result["positive"]


@pytest.mark.parametrize("include_records", [True, False])
def test_sentiment_on_row_slices_merges_into_the_whole_result(
    texts: pd.DataFrame, include_records: bool
) -> None:
    params = {"include_records": include_records}
    whole = analyze_dataset("sentiment", texts, params)
    for sizes in CHUNKINGS:
        bounds = itertools.pairwise(np.cumsum([0, *sizes]))
        parts = [analyze_dataset("sentiment", texts.iloc[a:b], params) for a, b in bounds]
        merged = merge_analyses("sentiment", parts, params)
        if include_records:
            assert merged == whole
        else:
            assert merged == {**whole, "mean_compound": pytest.approx(whole["mean_compound"])}
    with pytest.raises(TypeError, match="not row-wise"):
        merge_analyses("keywords", [whole])


@pytest.mark.parametrize("include_records", [True, False])
def test_sentiment_slices_as_the_canvas_runs_them_merge_exactly(
    texts: pd.DataFrame, include_records: bool
) -> None:
    """analyze_slice runs a slice with the parameters the analyzer asks for (sentiment:
    every record's scores), so the merge is the whole result to the last bit."""
    params = {"include_records": include_records}
    whole = _json_round_trip(analyze_dataset("sentiment", texts, params))
    for sizes in (*CHUNKINGS, [1000], [999, 1]):
        bounds = itertools.pairwise(np.cumsum([0, *sizes]))
        parts = [
            _json_round_trip(analyze_slice("sentiment", texts.iloc[a:b], params)) for a, b in bounds
        ]
        assert all("records" in p for p in parts)
        assert _json_round_trip(merge_analyses("sentiment", parts, params)) == whole
    with pytest.raises(TypeError, match="not row-wise"):
        analyze_slice("keywords", texts, {})


@pytest.mark.parametrize(
    "params",
    [
        {},
        {
            "top_k": 5,
            "ngram_range": [1, 2],
            "stop_words": None,
            "aggregate": "mean",
            "max_features": 50,
        },
    ],
)
def test_keywords_match_tfidf(
    texts: pd.DataFrame, raw: pd.DataFrame, params: dict[str, Any]
) -> None:
    result = _json_round_trip(analyze_dataset("keywords", texts, params, kind="text"))
    vectorizer = TfidfVectorizer(
        max_features=params.get("max_features", 5000),
        ngram_range=tuple(params.get("ngram_range", (1, 1))),
        stop_words=params.get("stop_words", "english"),
    )
    matrix = vectorizer.fit_transform(raw["text"].fillna(""))
    scores = np.asarray(matrix.sum(axis=0)).ravel()
    if params.get("aggregate") == "mean":
        scores = scores / matrix.shape[0]
    ranked = sorted(
        zip(vectorizer.get_feature_names_out(), scores, strict=True),
        key=lambda pair: (-pair[1], pair[0]),
    )[: params.get("top_k", 10)]
    assert [t["term"] for t in result["terms"]] == [term for term, _ in ranked]
    assert [t["score"] for t in result["terms"]] == pytest.approx([s for _, s in ranked])
    assert result["vocabulary"] == len(vectorizer.get_feature_names_out())
    assert result["documents"] == 1000


def test_keywords_with_no_vocabulary() -> None:
    frame = pd.DataFrame({"text": ["the and of", None, ""]})
    assert analyze_dataset("keywords", frame) == {"documents": 3, "vocabulary": 0, "terms": []}


# --- chunking, parameters, serialisation ------------------------------------------------


@pytest.mark.parametrize("sizes", CHUNKINGS)
def test_chunked_datasets_give_the_same_dataset_and_analyses(
    records: list[dict[str, Any]], table: pd.DataFrame, texts: pd.DataFrame, sizes: list[int]
) -> None:
    chunked_table = _chunked("tabular", records, sizes)
    chunked_texts = _chunked("text", records, sizes)
    assert_frame_equal(chunked_table, table)
    assert_frame_equal(chunked_texts, texts)
    for name, whole, parts in (
        ("summary", table, chunked_table),
        ("anomalies", table, chunked_table),
        ("sentiment", texts, chunked_texts),
        ("keywords", texts, chunked_texts),
    ):
        assert analyze_dataset(name, parts) == analyze_dataset(name, whole), name


@pytest.mark.parametrize(
    ("kind", "name", "params", "message"),
    [
        (
            "analyzer",
            "anomalies",
            {"threshold": -1},
            "invalid parameters for analyzer 'anomalies': threshold: "
            "Input should be greater than 0",
        ),
        ("analyzer", "anomalies", {"treshold": 2}, "treshold: Extra inputs are not permitted"),
        ("analyzer", "anomalies", {"contamination": 0.9}, "contamination"),
        ("analyzer", "anomalies", {"method": "zscore"}, "method: Input should be 'robust_z'"),
        ("analyzer", "keywords", {"ngram_range": [2, 1]}, "ngram_range must be [min, max]"),
        ("analyzer", "keywords", {"top_k": 0}, "top_k: Input should be greater than or equal"),
        ("dataset", "timeseries", {}, "timestamp_field: Field required"),
        (
            "dataset",
            "timeseries",
            {"timestamp_field": "t", "freq": "fortnightly"},
            "'fortnightly' is not a pandas offset alias",
        ),
        ("dataset", "tabular", {"max_depth": -1}, "max_depth"),
    ],
)
def test_bad_parameters_raise_a_clear_error(
    kind: str, name: str, params: dict[str, Any], message: str
) -> None:
    registry = get_registry()
    plugin = registry.analyzer(name) if kind == "analyzer" else registry.dataset(name)
    with pytest.raises(ParameterError) as raised:
        plugin.parse_params(params)
    assert message in str(raised.value)
    assert raised.value.errors
    assert raised.value.errors[0]["pointer"].startswith("/")


def test_analyzers_refuse_other_dataset_kinds_and_unknown_names(texts: pd.DataFrame) -> None:
    with pytest.raises(DatasetKindError, match="accepts datasets of kind table or timeseries"):
        analyze_dataset("summary", texts, kind="text")
    with pytest.raises(UnknownPlugin, match=r"no analyzer named 'nope'.*installed: "):
        analyze_dataset("nope", texts)
    with pytest.raises(DatasetError, match="no column 'body'"):
        analyze_dataset("sentiment", texts, {"column": "body"})


def _edge_datasets() -> dict[str, pd.DataFrame]:
    return {
        "empty": pd.DataFrame(),
        "no rows": build_dataset("tabular", [[]]),
        "one row": pd.DataFrame({"x": [1.0], "text": ["Fine."]}),
        "nulls and infinities": pd.DataFrame(
            {
                "x": [np.nan, np.inf, 1.0, 2.0],
                "y": pd.array([1, None, 3, 4], dtype="Int64"),
                "text": [None, "Good!", "bad", ""],
            }
        ),
    }


@pytest.mark.parametrize("dataset_name", list(_edge_datasets()))
@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("summary", {}),
        ("anomalies", {}),
        ("anomalies", {"method": "isolation_forest"}),
        ("sentiment", {}),
        ("keywords", {}),
    ],
)
def test_every_analyzer_result_is_strict_json(
    table: pd.DataFrame, name: str, params: dict[str, Any], dataset_name: str
) -> None:
    dataset = _edge_datasets()[dataset_name]
    analyzer = get_registry().analyzer(name)
    if "text" in analyzer.accepts and "text" not in dataset.columns:
        dataset = dataset.assign(text=pd.Series(["x"] * len(dataset), dtype="str"))
    result = analyzer.analyze(dataset, analyzer.parse_params(params))
    json.dumps(result, allow_nan=False)  # what analyze returns, before any clean-up


def test_every_analyzer_result_on_the_sample_is_strict_json(
    table: pd.DataFrame, texts: pd.DataFrame
) -> None:
    for name, dataset in (
        ("summary", table),
        ("anomalies", table),
        ("sentiment", texts),
        ("keywords", texts),
    ):
        analyzer = get_registry().analyzer(name)
        json.dumps(analyzer.analyze(dataset, analyzer.parse_params({})), allow_nan=False)


def test_generators_accept_no_records() -> None:
    for name, params in (("tabular", {}), ("text", {}), ("timeseries", {"timestamp_field": "t"})):
        dataset = build_dataset(name, [[], []], params)
        assert len(dataset) == 0, name


def test_json_safe_lists_of_plain_and_numpy_values() -> None:
    values = [
        1.5,
        math.nan,
        math.inf,
        -math.inf,
        None,
        True,
        3,
        "x",
        np.float64(2.5),
        np.float64(math.nan),
        np.int64(7),
        np.bool_(False),
        [math.nan, {"k": np.nan}],
        (1, math.inf),
        pd.Timestamp("2024-01-01T00:00:00Z"),
    ]
    assert json_safe(values) == [
        1.5,
        None,
        None,
        None,
        None,
        True,
        3,
        "x",
        2.5,
        None,
        7,
        False,
        [None, {"k": None}],
        [1, None],
        "2024-01-01T00:00:00+00:00",
    ]
    assert [type(v) for v in json_safe([np.float64(1), np.int64(1), np.bool_(True)])] == [
        float,
        int,
        bool,
    ]


def test_text_rows_of_consecutive_chunks_are_the_whole_datasets_rows(
    records: list[dict[str, Any]], texts: pd.DataFrame
) -> None:
    """What ``rows_are_records`` promises, which a sentiment slice relies on to read only
    its chunks' partials: any run of consecutive partials, combined, is those records' rows
    of the whole dataset (values and dtypes), and slices scored from them merge into the
    whole dataset's result."""
    assert rows_are_records("text")
    assert not rows_are_records("tabular")  # combine infers types on the whole table
    generator = get_registry().dataset("text")
    parsed = generator.parse_params(None)
    sizes = [250, 250, 250, 250]
    partials = [_through_parquet(generator.generate(c, parsed)) for c in _chunks(records, sizes)]
    whole = generator.combine(partials, parsed)
    assert_frame_equal(whole, texts)
    for first, last in ((0, 0), (1, 2), (0, 3), (3, 3)):
        part = generator.combine(partials[first : last + 1], parsed)
        start, end = first * 250, (last + 1) * 250
        assert_frame_equal(part.set_axis(pd.RangeIndex(start, end)), whole.iloc[start:end])
    bounds = [(0, 130), (130, 600), (600, 1000)]
    sliced = [
        analyze_slice("sentiment", whole.iloc[a:b], {"include_records": False}) for a, b in bounds
    ]
    merged = merge_analyses("sentiment", sliced, {"include_records": False})
    assert merged == analyze_dataset("sentiment", whole, {"include_records": False})
