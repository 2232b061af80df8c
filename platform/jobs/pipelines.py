"""Pipelines validated against the plugin registry that compute workers publish.

The API never imports plugin code: compute workers write each installed plugin's name,
version, parameter schema and dataset kinds into the ``plugins`` table when they start,
and a pipeline is valid when every step names a registered plugin with parameters that
its JSON Schema accepts and every analyzer accepts a dataset the pipeline produces.

Each API process keeps the registry for ``REGISTRY_TTL_SECONDS``; when that copy is stale
it reads the shared cache (one Redis round trip) before the database. Publishing the
registry deletes the shared copy once the publish has committed.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError
from sqlalchemy import select
from sqlalchemy.orm import Session

from celeriac.platform.cache import get_cache, global_entry
from celeriac.platform.db import get_sessionmaker, run_after_commit, upsert_insert
from celeriac.platform.errors import ValidationFailed
from celeriac.platform.models import Plugin, utcnow

DATASET = "dataset"
ANALYZER = "analyzer"
REGISTRY_TTL_SECONDS = 10.0
REGISTRY_ENTRY = global_entry("plugins")

# Pipelines a tenant can name instead of listing steps.
NAMED_PIPELINES: dict[str, dict[str, list[dict[str, Any]]]] = {
    "tabular-summary": {
        "datasets": [{"name": "tabular"}],
        "analyzers": [{"name": "summary"}, {"name": "anomalies"}],
    },
    "text-insights": {
        "datasets": [{"name": "text"}],
        "analyzers": [{"name": "sentiment"}, {"name": "keywords"}],
    },
    "full": {
        "datasets": [{"name": "tabular"}, {"name": "text"}],
        "analyzers": [
            {"name": "summary"},
            {"name": "anomalies"},
            {"name": "sentiment"},
            {"name": "keywords"},
        ],
    },
}


@dataclass(frozen=True)
class PluginInfo:
    kind: str
    name: str
    version: str
    parameters_schema: dict[str, Any]
    produces: str | None = None
    accepts: tuple[str, ...] = ()
    description: str = ""
    rowwise: bool = False


def register_plugins(session: Session, plugins: Iterable[PluginInfo]) -> None:
    """Insert or update registry rows (compute workers call this at start)."""
    for info in plugins:
        Draft202012Validator.check_schema(info.parameters_schema)
        values = {
            "kind": info.kind,
            "name": info.name,
            "version": info.version,
            "description": info.description,
            "parameters_schema": info.parameters_schema,
            "produces": info.produces,
            "accepts": list(info.accepts),
            "rowwise": info.rowwise,
            "registered_at": utcnow(),
        }
        statement = upsert_insert(session, Plugin).values(**values)
        session.execute(
            statement.on_conflict_do_update(
                index_elements=["kind", "name"],
                set_={k: statement.excluded[k] for k in values if k not in ("kind", "name")},
            )
        )
    _registry_cache.clear()
    run_after_commit(session, forget_registry)


def forget_registry() -> None:
    """Drop this process's copy of the registry and the shared one (after a publish)."""
    forget_local_registry()
    get_cache().invalidate(REGISTRY_ENTRY)


def forget_local_registry() -> None:
    """Drop this process's copy of the registry (the next read goes to the cache or the
    database)."""
    _registry_cache.clear()


class _RegistryCache:
    """The registry, read at most every REGISTRY_TTL_SECONDS per process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loaded_at = -REGISTRY_TTL_SECONDS
        self._plugins: dict[tuple[str, str], PluginInfo] = {}

    def get(self, session: Session) -> dict[tuple[str, str], PluginInfo]:
        if time.monotonic() - self._loaded_at < REGISTRY_TTL_SECONDS:
            return self._plugins
        cache = get_cache()
        rows = cache.get_or_load_json(
            REGISTRY_ENTRY,
            lambda: _registry_rows(session),
            ttl_seconds=cache.settings.config_ttl_seconds,
        )
        plugins = {
            (row["kind"], row["name"]): PluginInfo(**{**row, "accepts": tuple(row["accepts"])})
            for row in rows
        }
        with self._lock:
            # An empty registry (no compute worker has published yet) is read again on
            # the next request: the first worker's plugins count as soon as they exist.
            self._plugins = plugins
            self._loaded_at = time.monotonic() if plugins else -REGISTRY_TTL_SECONDS
        return plugins

    def fresh(self) -> dict[tuple[str, str], PluginInfo] | None:
        """The registry if it was read within the TTL, else None (no I/O)."""
        if time.monotonic() - self._loaded_at < REGISTRY_TTL_SECONDS:
            return self._plugins
        return None

    def clear(self) -> None:
        with self._lock:
            self._loaded_at = -REGISTRY_TTL_SECONDS


def _registry_rows(session: Session) -> list[dict[str, Any]]:
    return [
        {
            "kind": row.kind,
            "name": row.name,
            "version": row.version,
            "parameters_schema": row.parameters_schema,
            "produces": row.produces,
            "accepts": list(row.accepts),
            "description": row.description,
            "rowwise": row.rowwise,
        }
        for row in session.scalars(select(Plugin))
    ]


_registry_cache = _RegistryCache()


def registered_plugins(session: Session) -> dict[tuple[str, str], PluginInfo]:
    return _registry_cache.get(session)


def cached_plugins() -> dict[tuple[str, str], PluginInfo] | None:
    """The registry as this process last read it, if that was within the TTL."""
    return _registry_cache.fresh()


def load_plugins() -> dict[tuple[str, str], PluginInfo]:
    """The registry, read through a session of its own when the cached copy is stale."""
    with get_sessionmaker()() as session:
        return _registry_cache.get(session)


def resolve_pipeline(
    session: Session, pipeline: str | dict[str, Any], pointer: str = "#/body/pipeline"
) -> dict[str, Any]:
    """The pipeline with plugin versions, or 422 listing every problem with a pointer."""
    return resolve_against(registered_plugins(session), pipeline, pointer)


def resolve_against(
    plugins: Mapping[tuple[str, str], PluginInfo],
    pipeline: str | dict[str, Any],
    pointer: str = "#/body/pipeline",
) -> dict[str, Any]:
    """:func:`resolve_pipeline` against a registry already in hand."""
    name = None
    if isinstance(pipeline, str):
        if pipeline not in NAMED_PIPELINES:
            raise ValidationFailed(
                f"unknown pipeline {pipeline!r}; named pipelines are "
                f"{', '.join(sorted(NAMED_PIPELINES))}",
                errors=[{"pointer": pointer, "detail": "unknown pipeline name"}],
            )
        name, pipeline = pipeline, NAMED_PIPELINES[pipeline]
    errors: list[dict[str, str]] = []
    resolved: dict[str, Any] = {"name": name, "datasets": [], "analyzers": []}
    for section, kind in (("datasets", DATASET), ("analyzers", ANALYZER)):
        for index, step in enumerate(pipeline.get(section, [])):
            where = f"{pointer}/{section}/{index}"
            info = plugins.get((kind, step["name"]))
            if info is None:
                known = sorted(n for k, n in plugins if k == kind)
                errors.append(
                    {
                        "pointer": f"{where}/name",
                        "detail": f"no {kind} plugin named {step['name']!r} is registered "
                        f"(registered: {', '.join(known) or 'none'})",
                    }
                )
                continue
            params = step.get("params") or {}
            errors += _parameter_errors(info, params, f"{where}/params")
            resolved[section].append(
                {
                    "name": info.name,
                    "version": info.version,
                    "params": params,
                    "produces": info.produces,
                    "accepts": list(info.accepts),
                    "rowwise": info.rowwise,
                }
            )
    produced = {d["produces"] for d in resolved["datasets"]}
    for index, analyzer in enumerate(resolved["analyzers"]):
        if analyzer["accepts"] and not produced & set(analyzer["accepts"]):
            errors.append(
                {
                    "pointer": f"{pointer}/analyzers/{index}/name",
                    "detail": f"analyzer {analyzer['name']!r} needs a dataset of kind "
                    f"{' or '.join(analyzer['accepts'])}; the pipeline produces "
                    f"{', '.join(sorted(p for p in produced if p)) or 'none'}",
                }
            )
    if errors:
        raise ValidationFailed(
            f"the pipeline is not valid: {errors[0]['detail']}"
            + (f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""),
            errors=errors,
        )
    return resolved


def _parameter_errors(
    info: PluginInfo, params: dict[str, Any], pointer: str
) -> list[dict[str, str]]:
    try:
        validator = Draft202012Validator(info.parameters_schema)
        found = sorted(validator.iter_errors(params), key=lambda e: list(e.absolute_path))
    except SchemaError:  # a broken registry entry is the platform's fault, not the caller's
        return [{"pointer": pointer, "detail": f"plugin {info.name!r} has an invalid schema"}]
    return [
        {
            "pointer": pointer + "".join(f"/{part}" for part in error.absolute_path),
            "detail": f"{info.name}: {error.message}",
        }
        for error in found
    ]
