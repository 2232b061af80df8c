"""Compute plugins: dataset generators and analyzers, their registry and how to run them.

A dataset is built per input chunk and then combined: ``generate_partial`` runs on each
chunk of records (in parallel), ``combine_partials`` turns the partials into the dataset,
and ``analyze_dataset`` runs an analyzer on it (a row-wise analyzer may also run on
slices of the dataset's rows, in parallel, with ``analyze_slice``, and ``merge_analyses``
joins the results).
Plugins are found through the entry point groups ``celeriac.datasets`` and
``celeriac.analyzers``. Nothing here imports Celery.
"""

from celeriac.workers.compute.plugin import (
    ANALYZERS_GROUP,
    DATASETS_GROUP,
    Analyzer,
    DatasetError,
    DatasetGenerator,
    DatasetKindError,
    NoParameters,
    ParameterError,
    Parameters,
    Plugin,
    PluginError,
    Records,
    UnknownPlugin,
)
from celeriac.workers.compute.registry import Registry, discover, get_registry, setup_plugins
from celeriac.workers.compute.run import (
    analyze_dataset,
    analyze_slice,
    build_dataset,
    combine_partials,
    generate_partial,
    merge_analyses,
    rows_are_records,
)

__all__ = [
    "ANALYZERS_GROUP",
    "DATASETS_GROUP",
    "Analyzer",
    "DatasetError",
    "DatasetGenerator",
    "DatasetKindError",
    "NoParameters",
    "ParameterError",
    "Parameters",
    "Plugin",
    "PluginError",
    "Records",
    "Registry",
    "UnknownPlugin",
    "analyze_dataset",
    "analyze_slice",
    "build_dataset",
    "combine_partials",
    "discover",
    "generate_partial",
    "get_registry",
    "merge_analyses",
    "rows_are_records",
    "setup_plugins",
]
