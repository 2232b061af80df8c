"""Plugin discovery through entry points, and the registry a compute worker publishes.

``discover`` loads the built-in plugins, then every entry point of the groups
``celeriac.datasets`` and ``celeriac.analyzers``. The built-ins are declared as entry
points too (``BUILTINS`` is that table); finding them both ways is expected and not an
error. A third-party plugin that reuses a built-in's name is refused (logged, left out):
a package must not be able to replace ``summary`` for every tenant by being installed.
Between third-party plugins, the first by (entry point name, distribution name) wins
and the others are refused. A plugin that fails to load or breaks the interface is
logged and left out, so that one broken package does not stop the worker.
"""

from __future__ import annotations

import functools
import importlib
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib.metadata import EntryPoint, entry_points
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError
from pydantic import BaseModel

from celeriac.platform.jobs.pipelines import PluginInfo
from celeriac.workers.compute.plugin import (
    ANALYZERS_GROUP,
    DATASETS_GROUP,
    Analyzer,
    DatasetGenerator,
    Plugin,
    UnknownPlugin,
)

logger = logging.getLogger(__name__)

# (entry point group, name, object reference): the entry points pyproject.toml declares.
BUILTINS: tuple[tuple[str, str, str], ...] = (
    (DATASETS_GROUP, "tabular", "celeriac.workers.compute.plugins.tabular:tabular"),
    (DATASETS_GROUP, "text", "celeriac.workers.compute.plugins.text:text"),
    (DATASETS_GROUP, "timeseries", "celeriac.workers.compute.plugins.timeseries:timeseries"),
    (ANALYZERS_GROUP, "summary", "celeriac.workers.compute.plugins.summary:summary"),
    (ANALYZERS_GROUP, "anomalies", "celeriac.workers.compute.plugins.anomalies:anomalies"),
    (ANALYZERS_GROUP, "sentiment", "celeriac.workers.compute.plugins.sentiment:sentiment"),
    (ANALYZERS_GROUP, "keywords", "celeriac.workers.compute.plugins.keywords:keywords"),
)
NAME = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
_BASES: dict[str, type[Plugin[Any]]] = {DATASETS_GROUP: DatasetGenerator, ANALYZERS_GROUP: Analyzer}


@dataclass(frozen=True)
class Registry:
    """The plugins installed in this process, by name, with where each came from."""

    datasets: Mapping[str, DatasetGenerator[Any]]
    analyzers: Mapping[str, Analyzer[Any]]
    sources: Mapping[tuple[str, str], str] = field(default_factory=dict)

    def dataset(self, name: str) -> DatasetGenerator[Any]:
        """The dataset generator called ``name``, or :class:`UnknownPlugin`."""
        try:
            return self.datasets[name]
        except KeyError:
            raise UnknownPlugin(
                f"no dataset generator named {name!r} is installed "
                f"(installed: {', '.join(sorted(self.datasets)) or 'none'})"
            ) from None

    def analyzer(self, name: str) -> Analyzer[Any]:
        """The analyzer called ``name``, or :class:`UnknownPlugin`."""
        try:
            return self.analyzers[name]
        except KeyError:
            raise UnknownPlugin(
                f"no analyzer named {name!r} is installed "
                f"(installed: {', '.join(sorted(self.analyzers)) or 'none'})"
            ) from None

    def plugins(self) -> list[Plugin[Any]]:
        """Every plugin, datasets first, each group by name."""
        return [
            *(self.datasets[n] for n in sorted(self.datasets)),
            *(self.analyzers[n] for n in sorted(self.analyzers)),
        ]

    def plugin_infos(self) -> list[PluginInfo]:
        """The rows for ``celeriac.platform.jobs.pipelines.register_plugins``."""
        return [plugin.info() for plugin in self.plugins()]

    def setup(self) -> None:
        """Run every plugin's ``load`` unless it ran already in this process.

        A failing ``load`` is logged and left for the first use to retry (and fail with
        the error), so that one broken plugin does not stop the process.
        """
        for plugin in self.plugins():
            try:
                plugin.ensure_loaded()
            except Exception:
                logger.exception("plugin failed to load", extra={"plugin": plugin.name})


def discover(*, builtins: bool = True) -> Registry:
    """Load the built-ins and every plugin the installed distributions declare."""
    found: dict[str, dict[str, Plugin[Any]]] = {DATASETS_GROUP: {}, ANALYZERS_GROUP: {}}
    sources: dict[tuple[str, str], str] = {}
    builtin_names: set[tuple[str, str]] = set()
    if builtins:
        for group, name, target in BUILTINS:
            plugin = _instance(_load_reference(target))
            found[group][name] = plugin
            sources[(plugin.kind, name)] = "built-in"
            builtin_names.add((group, name))
    for group in (DATASETS_GROUP, ANALYZERS_GROUP):
        for entry_point in sorted(entry_points(group=group), key=_entry_point_order):
            origin = _distribution(entry_point)
            try:
                plugin = _instance(entry_point.load())
            except Exception:
                logger.exception(
                    "plugin entry point failed to load; left out",
                    extra={"entry_point": f"{group}:{entry_point.name}", "distribution": origin},
                )
                continue
            existing = found[group].get(entry_point.name)
            if existing is plugin:  # a built-in found through its own entry point
                continue
            problems = interface_problems(plugin, group, entry_point.name)
            if existing is not None:
                taken_by = (
                    "a built-in"
                    if (group, entry_point.name) in builtin_names
                    else (sources[(existing.kind, existing.name)])
                )
                problems.append(f"the name {entry_point.name!r} is taken by {taken_by}")
            if problems:
                logger.error(
                    "plugin refused: %s",
                    "; ".join(problems),
                    extra={"entry_point": f"{group}:{entry_point.name}", "distribution": origin},
                )
                continue
            found[group][plugin.name] = plugin
            sources[(plugin.kind, plugin.name)] = origin
    datasets = found[DATASETS_GROUP].items()
    analyzers = found[ANALYZERS_GROUP].items()
    return Registry(
        datasets={n: p for n, p in datasets if isinstance(p, DatasetGenerator)},
        analyzers={n: p for n, p in analyzers if isinstance(p, Analyzer)},
        sources=sources,
    )


@functools.cache
def get_registry() -> Registry:
    """This process's registry, discovered on first use (``get_registry.cache_clear()``
    forgets it, e.g. after installing a plugin in a test)."""
    return discover()


def setup_plugins(registry: Registry | None = None) -> Registry:
    """Load every plugin's process-wide resources; call once at worker process start
    (Celery's ``worker_process_init``). Returns the registry it set up."""
    registry = registry or get_registry()
    registry.setup()
    return registry


def interface_problems(plugin: object, group: str, entry_point_name: str) -> list[str]:
    """What is wrong with ``plugin`` as a plugin of ``group`` (empty when nothing)."""
    base = _BASES[group]
    if not isinstance(plugin, base):
        return [f"{type(plugin).__name__} is not an instance of {base.__name__}"]
    problems = []
    name = getattr(plugin, "name", None)
    if not isinstance(name, str) or not NAME.match(name):
        problems.append(f"name {name!r} is not lowercase letters, digits, '_' or '-'")
    elif name != entry_point_name:
        problems.append(f"the entry point is named {entry_point_name!r} but the plugin {name!r}")
    if not isinstance(getattr(plugin, "version", None), str) or not plugin.version:
        problems.append("version is not a non-empty string")
    parameters = getattr(plugin, "parameters", None)
    if not (isinstance(parameters, type) and issubclass(parameters, BaseModel)):
        problems.append("parameters is not a pydantic model class")
    else:
        try:
            Draft202012Validator.check_schema(plugin.parameters_schema())
        except SchemaError as exc:
            problems.append(f"the parameters' JSON Schema is invalid: {exc.message}")
    if isinstance(plugin, DatasetGenerator):
        if not isinstance(getattr(plugin, "produces", None), str) or not plugin.produces:
            problems.append("produces is not a dataset kind")
    elif isinstance(plugin, Analyzer):
        accepts = getattr(plugin, "accepts", None)
        if not _strings(accepts):
            problems.append("accepts is not a non-empty tuple of dataset kinds")
    return problems


def _strings(value: object) -> bool:
    return isinstance(value, tuple) and bool(value) and all(isinstance(v, str) for v in value)


def _instance(loaded: Any) -> Any:
    # An entry point may name the plugin class instead of an instance.
    return loaded() if isinstance(loaded, type) else loaded


def _load_reference(reference: str) -> Any:
    module, _, attribute = reference.partition(":")
    target: Any = importlib.import_module(module)
    for part in attribute.split("."):
        target = getattr(target, part)
    return target


def _distribution(entry_point: EntryPoint) -> str:
    dist = entry_point.dist
    return f"{dist.name} {dist.version}" if dist is not None else "unknown distribution"


def _entry_point_order(entry_point: EntryPoint) -> tuple[str, str]:
    return (entry_point.name, _distribution(entry_point))
