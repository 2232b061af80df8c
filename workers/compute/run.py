"""Running plugins by name: the plain functions the compute tasks call.

A dataset is ``combine_partials(name, [generate_partial(name, chunk) for chunk in
chunks])`` (``build_dataset`` does both in one process); analyzers run on a whole
dataset. Parameters arrive as JSON objects and are validated here with the plugin's
model (:class:`ParameterError`), even though the API validated them against the
published schema, since a worker may run a newer plugin version than the one the API saw.
Every error a plugin raises for bad input is a :class:`PluginError`: the task should fail
the branch without retrying.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import pandas as pd
from pydantic import BaseModel

from celeriac.workers.compute.plugin import DatasetKindError, Plugin, Records, json_safe
from celeriac.workers.compute.registry import Registry, get_registry

logger = logging.getLogger(__name__)

Params = Mapping[str, Any] | None


def generate_partial(
    name: str, records: Records, params: Params = None, *, registry: Registry | None = None
) -> pd.DataFrame:
    """The partial dataset of one chunk of records (any process, any order)."""
    generator = (registry or get_registry()).dataset(name)
    parsed = generator.parse_params(params)
    _ensure_loaded(generator)
    return generator.generate(records, parsed)


def combine_partials(
    name: str,
    partials: Sequence[pd.DataFrame],
    params: Params = None,
    *,
    registry: Registry | None = None,
) -> pd.DataFrame:
    """The dataset made of the partials of every chunk, given in chunk order."""
    generator = (registry or get_registry()).dataset(name)
    parsed = generator.parse_params(params)
    _ensure_loaded(generator)
    return generator.combine(list(partials), parsed)


def rows_are_records(name: str, *, registry: Registry | None = None) -> bool:
    """Whether the generator's dataset has one row per record, partials concatenated
    (``DatasetGenerator.rows_are_records``): a slice of its rows can then be combined from
    the partials of the chunks those records are in."""
    return bool((registry or get_registry()).dataset(name).rows_are_records)


def build_dataset(
    name: str,
    chunks: Iterable[Records],
    params: Params = None,
    *,
    registry: Registry | None = None,
) -> pd.DataFrame:
    """Generate every chunk and combine them, in this process."""
    generator = (registry or get_registry()).dataset(name)
    parsed = generator.parse_params(params)
    _ensure_loaded(generator)
    return generator.combine([generator.generate(chunk, parsed) for chunk in chunks], parsed)


def analyze_dataset(
    name: str,
    dataset: pd.DataFrame,
    params: Params | BaseModel = None,
    *,
    kind: str | None = None,
    registry: Registry | None = None,
) -> dict[str, Any]:
    """The analyzer's JSON-serialisable result on ``dataset``.

    ``kind`` is the dataset's kind (its generator's ``produces``); when given, an
    analyzer that does not accept it raises :class:`DatasetKindError`.
    """
    analyzer = (registry or get_registry()).analyzer(name)
    if kind is not None and kind not in analyzer.accepts:
        raise DatasetKindError(
            f"analyzer {name!r} accepts datasets of kind {' or '.join(analyzer.accepts)}, "
            f"not {kind!r}"
        )
    parsed = analyzer.parse_params(params)
    _ensure_loaded(analyzer)
    result = analyzer.analyze(dataset, parsed)
    if not isinstance(result, Mapping):
        raise TypeError(f"analyzer {name!r} returned {type(result).__name__}, not a dict")
    safe: dict[str, Any] = json_safe(result)
    return safe


def analyze_slice(
    name: str,
    rows: pd.DataFrame,
    params: Params = None,
    *,
    registry: Registry | None = None,
) -> dict[str, Any]:
    """A row-wise analyzer's result on one slice of a dataset's rows, with the parameters
    it asks slices to run with (``Analyzer.slice_params``), for :func:`merge_analyses`."""
    analyzer = (registry or get_registry()).analyzer(name)
    if not analyzer.rowwise:
        raise TypeError(f"analyzer {name!r} is not row-wise: run it on the whole dataset")
    sliced = analyzer.slice_params(analyzer.parse_params(params))
    return analyze_dataset(name, rows, sliced, registry=registry)


def merge_analyses(
    name: str,
    results: Sequence[Mapping[str, Any]],
    params: Params = None,
    *,
    registry: Registry | None = None,
) -> dict[str, Any]:
    """The result on a whole dataset from a row-wise analyzer's results on consecutive
    slices of its rows, given in order (see ``Analyzer.rowwise``)."""
    analyzer = (registry or get_registry()).analyzer(name)
    if not analyzer.rowwise:
        raise TypeError(f"analyzer {name!r} is not row-wise: run it on the whole dataset")
    safe: dict[str, Any] = json_safe(analyzer.merge(list(results), analyzer.parse_params(params)))
    return safe


def _ensure_loaded(plugin: Plugin[Any]) -> None:
    if not plugin.loaded:
        logger.warning(
            "plugin loaded on first use; call setup_plugins() at process start",
            extra={"plugin": plugin.name},
        )
        plugin.ensure_loaded()
