"""The typed interface every dataset generator and analyzer implements.

A plugin is an instance of a subclass of :class:`DatasetGenerator` or :class:`Analyzer`
with a name, a version, a description and a pydantic model of its parameters, whose JSON
Schema the compute workers publish to the platform's registry (ADR 0003). Packages expose
plugins through the entry point groups ``celeriac.datasets`` and ``celeriac.analyzers``::

    [project.entry-points."celeriac.analyzers"]
    row_count = "my_package.module:row_count"   # an instance (or a class without arguments)

How a dataset is made: the input is split into chunks; ``generate`` turns each chunk of
records into a *partial* (chunks run in parallel, in any process), and ``combine`` turns
the partials, in chunk order, into the dataset. A dataset is always ``combine`` of
partials, even for a single chunk, so anything that depends on all the records (type
inference, re-aggregation) belongs in ``combine``. Analyzers then run on the dataset and
return a JSON-serialisable dict.

Resources that are expensive to build (lexicons, models) are built in ``load``, which
runs once per process: ``setup_plugins`` calls it at worker process start, and
``ensure_loaded`` runs it on first use when that did not happen.
"""

from __future__ import annotations

import logging
import math
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from datetime import date, datetime
from typing import Any, ClassVar, Generic, TypeAlias, TypeVar

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, ValidationError

from celeriac.platform.jobs.pipelines import ANALYZER, DATASET, PluginInfo

logger = logging.getLogger(__name__)

DATASETS_GROUP = "celeriac.datasets"
ANALYZERS_GROUP = "celeriac.analyzers"

# The input of a generator: one chunk of JSON records, or a DataFrame of them.
Records: TypeAlias = pd.DataFrame | Sequence[Mapping[str, Any]]

# One lock for every plugin's load(): loads happen at process start, so there is nothing
# to gain from finer locks, and plugin subclasses need not call super().__init__().
_load_lock = threading.RLock()


class PluginError(Exception):
    """A plugin cannot run on this input: permanent, retrying will not help."""


class ParameterError(PluginError, ValueError):
    """Parameters that the plugin's model rejects; ``errors`` has a pointer per problem."""

    def __init__(self, message: str, errors: Sequence[Mapping[str, str]] = ()) -> None:
        super().__init__(message)
        self.errors = [dict(e) for e in errors]


class UnknownPlugin(PluginError, LookupError):
    """No plugin of that kind and name is installed in this process."""


class DatasetKindError(PluginError):
    """The analyzer does not accept datasets of that kind."""


class DatasetError(PluginError, ValueError):
    """The records or the dataset lack what the plugin needs (a field, a column)."""


class Parameters(BaseModel):
    """Base for plugin parameter models: unknown keys are errors, values are immutable.

    ``extra="forbid"`` puts ``additionalProperties: false`` in the published schema, so
    the API rejects a misspelt parameter instead of silently ignoring it.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)


class NoParameters(Parameters):
    """The parameters of a plugin that takes none."""


P = TypeVar("P", bound=BaseModel)


class Plugin(ABC, Generic[P]):
    """What dataset generators and analyzers share: identity, parameters, ``load``."""

    kind: ClassVar[str]
    name: str
    version: str
    description: str = ""
    parameters: type[P]

    def load(self) -> None:
        """Build process-wide resources (lexicons, models); runs once per process."""

    def ensure_loaded(self) -> None:
        """Run ``load`` unless it already ran in this process (thread-safe)."""
        if self.__dict__.get("_loaded"):
            return
        with _load_lock:
            if self.__dict__.get("_loaded"):
                return
            self.load()
            self.__dict__["_loaded"] = True

    @property
    def loaded(self) -> bool:
        """Whether ``load`` has run in this process."""
        return bool(self.__dict__.get("_loaded"))

    def parameters_schema(self) -> dict[str, Any]:
        """The JSON Schema (Draft 2020-12) of the parameters, as the API validates them."""
        return self.parameters.model_json_schema()

    def parse_params(self, raw: Mapping[str, Any] | BaseModel | None = None) -> P:
        """Validate raw parameters (from JSON) into the parameters model.

        Raises :class:`ParameterError` with one line per problem.
        """
        if isinstance(raw, self.parameters):
            return raw
        if isinstance(raw, BaseModel):
            raw = raw.model_dump()
        try:
            return self.parameters.model_validate(dict(raw or {}))
        except ValidationError as exc:
            errors = [
                {
                    "pointer": "".join(f"/{part}" for part in error["loc"]),
                    "detail": error["msg"],
                }
                for error in exc.errors()
            ]
            lines = "; ".join(
                f"{e['pointer'].lstrip('/') or '(parameters)'}: {e['detail']}" for e in errors
            )
            raise ParameterError(
                f"invalid parameters for {self.kind} {self.name!r}: {lines}", errors
            ) from None

    def info(self) -> PluginInfo:
        """The registry row the platform validates pipelines against."""
        return PluginInfo(
            kind=self.kind,
            name=self.name,
            version=self.version,
            parameters_schema=self.parameters_schema(),
            produces=getattr(self, "produces", None),
            accepts=tuple(getattr(self, "accepts", ())),
            description=self.description,
            rowwise=bool(getattr(self, "rowwise", False)),
        )

    def __repr__(self) -> str:
        return f"<{self.kind} {self.name} {self.version}>"


class DatasetGenerator(Plugin[P]):
    """Turns chunks of records into a dataset of kind ``produces``.

    ``generate`` must depend on its chunk only (chunks run in parallel and may be split
    anywhere); ``combine`` receives the partials in chunk order.
    """

    kind: ClassVar[str] = DATASET
    produces: str
    # One row per record: each partial holds one row per record of its chunk, in order,
    # and ``combine`` is their concatenation with a fresh 0..n-1 index (it may also refuse
    # the whole dataset, never change its rows). Then any consecutive run of partials,
    # combined, is the same rows of the whole dataset, and a row-wise analyzer's slice
    # reads only the partials its rows come from instead of all of them (ADR 0018).
    rows_are_records: ClassVar[bool] = False

    @abstractmethod
    def generate(self, records: Records, params: P) -> pd.DataFrame:
        """The partial dataset of one chunk of records."""

    # ARG002: the default ignores the params a subclass may use
    def combine(self, partials: Sequence[pd.DataFrame], params: P) -> pd.DataFrame:  # noqa: ARG002
        """The dataset made of the partials of every chunk, in chunk order.

        The default concatenates them with a fresh 0..n-1 index, so that row positions
        are positions in the whole input.
        """
        frames = [p for p in partials if len(p.columns)]
        if not frames:
            return pd.DataFrame()
        return pd.concat(frames, ignore_index=True, sort=False)


class Analyzer(Plugin[P]):
    """Analyzes a dataset of one of the kinds in ``accepts``.

    ``analyze`` returns a JSON-serialisable dict: plain str, int, float (never NaN or
    infinity: None instead), bool, None, lists and dicts.
    """

    kind: ClassVar[str] = ANALYZER
    accepts: tuple[str, ...]
    # Row-wise analyzers may run on slices of rows in parallel: ``merge`` of the results
    # on consecutive slices, in order, is the result on the whole dataset.
    rowwise: ClassVar[bool] = False

    @abstractmethod
    def analyze(self, dataset: pd.DataFrame, params: P) -> dict[str, Any]:
        """The result of the analysis (JSON-serialisable)."""

    def slice_params(self, params: P) -> P:
        """The parameters each slice runs with (row-wise analyzers only; default: the
        job's). An analyzer whose merge needs more than its result shows asks for it
        here: ``sentiment`` keeps every record's scores in its slices' results, so that
        the merged mean is the whole dataset's to the last bit, and ``merge``, which gets
        the job's parameters, leaves them out again if the job did not ask for them."""
        return params

    def merge(self, results: Sequence[Mapping[str, Any]], params: P) -> dict[str, Any]:
        """The result on the whole dataset from results on consecutive row slices, in
        order (row-wise analyzers only)."""
        raise NotImplementedError(f"analyzer {self.name!r} is not row-wise")


def records_frame(records: Records) -> pd.DataFrame:
    """Records as a flat DataFrame (nested objects flattened with ``.`` separators)."""
    if isinstance(records, pd.DataFrame):
        return records
    return flatten_records(records)


def flatten_records(records: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """``pd.json_normalize(records, sep=".")``, about 40% faster.

    The same result (a test compares them): top-level values first, then the nested
    ones flattened in order, empty objects dropped, lists left as they are; columns in
    the order they first appear.
    """
    if not len(records):
        return pd.DataFrame()
    return pd.DataFrame([_flat(record) for record in records])


def _flat(record: Mapping[str, Any]) -> dict[str, Any]:
    # json_normalize's order: a record's own values, then its nested objects flattened.
    flat = {key: value for key, value in record.items() if not isinstance(value, dict)}
    for key, value in record.items():
        if isinstance(value, dict):
            _flatten_into(value, f"{key}.", flat)
    return flat


def _flatten_into(nested: Mapping[str, Any], prefix: str, flat: dict[str, Any]) -> None:
    for key, value in nested.items():
        if isinstance(value, dict):
            _flatten_into(value, f"{prefix}{key}.", flat)
        else:
            flat[f"{prefix}{key}"] = value


def numeric_columns(dataset: pd.DataFrame) -> list[str]:
    """Columns holding numbers; booleans are not numbers here (as in ``describe``)."""
    return [
        str(c)
        for c, dtype in dataset.dtypes.items()
        if pd.api.types.is_numeric_dtype(dtype) and not pd.api.types.is_bool_dtype(dtype)
    ]


def float_list(values: Iterable[Any] | np.ndarray[Any, Any] | pd.Series[Any]) -> list[float | None]:
    """Numbers as plain floats for JSON, with None for NaN and infinities."""
    array = np.asarray(values, dtype=np.float64)
    numbers: list[float | None] = array.tolist()
    for position in np.flatnonzero(~np.isfinite(array)).tolist():
        numbers[position] = None
    return numbers


_PLAIN = frozenset((str, int, bool, type(None)))
_isfinite = math.isfinite


def json_safe(value: Any) -> Any:
    """``value`` with numpy/pandas scalars, timestamps and NaN made JSON-serialisable.

    Raises TypeError for anything that has no obvious JSON form (an analyzer bug).
    """
    if value is None or isinstance(value, str | bool | int):
        return value
    if isinstance(value, float):  # np.float64 too
        return float(value) if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        # Plain values are taken as they are without a call each: a sentiment result
        # holds 400,000 numbers, 68 ms one call at a time, 15 ms so.
        return [
            v if (kind := type(v)) in _PLAIN or (kind is float and _isfinite(v)) else json_safe(v)
            for v in value
        ]
    if isinstance(value, np.ndarray | pd.Series | pd.Index):
        return [json_safe(v) for v in value.tolist()]
    if isinstance(value, np.generic):
        return json_safe(value.item())
    if value is pd.NaT or value is pd.NA:
        return None
    if isinstance(value, datetime | date | pd.Timestamp):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON-serialisable: {value!r}")
