"""Plugin discovery through entry points, and the registry rows the API validates against.

Third-party distributions are made for real as ``.dist-info`` folders on ``sys.path``
(what an installed wheel leaves), so ``importlib.metadata`` finds their entry points the
way it finds any installed package's.
"""

from __future__ import annotations

import importlib
import logging
import sys
import textwrap
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
from sqlalchemy.orm import Session

from celeriac.platform.db import create_db_engine
from celeriac.platform.errors import ValidationFailed
from celeriac.platform.jobs.pipelines import (
    ANALYZER,
    DATASET,
    NAMED_PIPELINES,
    register_plugins,
    resolve_pipeline,
)
from celeriac.workers.compute import Analyzer, analyze_dataset, discover, get_registry
from celeriac.workers.compute.registry import BUILTINS

REPO = Path(__file__).resolve().parents[2]
PLUGINS_MODULE = """
from typing import Any

import pandas as pd

from celeriac.workers.compute.plugin import Analyzer, NoParameters


class Counting(Analyzer[NoParameters]):
    version = "9.9"
    parameters = NoParameters
    accepts = ("table",)

    def __init__(self, name: str = "counting") -> None:
        self.name = name

    def analyze(self, dataset: pd.DataFrame, params: NoParameters) -> dict[str, Any]:
        return {"rows": len(dataset), "by": self.name}


class Shout(Counting):
    name = "shout"

    def __init__(self) -> None:
        pass


fake_summary = Counting("summary")
first = Counting("twin")
second = Counting("twin")
mismatch = Counting("other_name")
not_a_plugin = object()
"""


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Path]:
    """A folder on sys.path for made-up distributions, and their modules forgotten after."""
    sys.path.insert(0, str(tmp_path))
    importlib.invalidate_caches()
    yield tmp_path
    sys.path.remove(str(tmp_path))
    for name in [m for m in sys.modules if m.startswith("fake_celeriac_")]:
        del sys.modules[name]
    importlib.invalidate_caches()


def _distribution(
    site: Path, name: str, analyzers: dict[str, str], datasets: dict[str, str] | None = None
) -> None:
    info = site / f"{name.replace('-', '_')}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    lines = ["[celeriac.analyzers]", *(f"{k} = {v}" for k, v in analyzers.items())]
    if datasets:
        lines += ["[celeriac.datasets]", *(f"{k} = {v}" for k, v in datasets.items())]
    (info / "entry_points.txt").write_text("\n".join(lines) + "\n")


def test_discover_finds_every_builtin() -> None:
    registry = discover()
    assert {"tabular", "text", "timeseries"} <= set(registry.datasets)
    assert {"summary", "anomalies", "sentiment", "keywords"} <= set(registry.analyzers)
    produces = {n: registry.dataset(n).produces for n in ("tabular", "text", "timeseries")}
    assert produces == {"tabular": "table", "text": "text", "timeseries": "timeseries"}
    assert registry.analyzer("sentiment").accepts == ("text",)
    assert registry.sources[(ANALYZER, "summary")] == "built-in"
    assert get_registry() is get_registry()
    # Discovering again hands out the same plugin objects: nothing is loaded twice.
    assert discover().analyzer("sentiment") is registry.analyzer("sentiment")


def test_plugin_infos_are_what_the_platform_registers() -> None:
    infos = {(i.kind, i.name): i for i in discover().plugin_infos()}
    tabular = infos[(DATASET, "tabular")]
    assert (tabular.version, tabular.produces, tabular.accepts) == ("1.0.0", "table", ())
    anomalies = infos[(ANALYZER, "anomalies")]
    assert anomalies.produces is None
    assert anomalies.accepts == ("table", "timeseries")
    schema = anomalies.parameters_schema
    assert schema["additionalProperties"] is False
    assert schema["properties"]["threshold"] == {
        "default": 3.5,
        "description": schema["properties"]["threshold"]["description"],
        "exclusiveMinimum": 0,
        "title": "Threshold",
        "type": "number",
    }
    assert infos[(DATASET, "timeseries")].parameters_schema["required"] == ["timestamp_field"]
    # The canvas may slice only row-wise analyzers (sentiment), and learns it from here.
    assert {name for (_, name), info in infos.items() if info.rowwise} == {"sentiment"}


def test_named_pipelines_resolve_against_the_published_registry(pg_url: str) -> None:
    engine = create_db_engine(pg_url)
    try:
        with Session(engine) as session, session.begin():
            register_plugins(session, discover().plugin_infos())
        with Session(engine) as session:
            for name in NAMED_PIPELINES:
                resolved = resolve_pipeline(session, name)
                assert all(step["version"] == "1.0.0" for step in resolved["datasets"])
            rowwise = {
                a["name"]: a["rowwise"] for a in resolve_pipeline(session, "full")["analyzers"]
            }
            assert rowwise == {
                "summary": False,
                "anomalies": False,
                "sentiment": True,
                "keywords": False,
            }
            resolve_pipeline(
                session,
                {
                    "datasets": [
                        {"name": "timeseries", "params": {"timestamp_field": "ts", "freq": "15min"}}
                    ],
                    "analyzers": [
                        {
                            "name": "anomalies",
                            "params": {"method": "isolation_forest", "contamination": 0.05},
                        }
                    ],
                },
            )
            with pytest.raises(ValidationFailed) as raised:
                resolve_pipeline(
                    session,
                    {
                        "datasets": [{"name": "tabular", "params": {"max_depth": -1}}],
                        "analyzers": [
                            {"name": "anomalies", "params": {"threshold": 0}},
                            {"name": "keywords"},
                        ],
                    },
                )
            pointers = sorted(e["pointer"] for e in raised.value.errors)
            assert pointers == [
                "#/body/pipeline/analyzers/0/params/threshold",
                "#/body/pipeline/analyzers/1/name",  # keywords needs a text dataset
                "#/body/pipeline/datasets/0/params/max_depth",
            ]
    finally:
        engine.dispose()


def test_third_party_plugins_are_found_and_builtins_cannot_be_replaced(
    site: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (site / "fake_celeriac_plugins.py").write_text(textwrap.dedent(PLUGINS_MODULE))
    module = "fake_celeriac_plugins"
    _distribution(
        site,
        "fake-a",
        {
            "counting": f"{module}:Counting",  # a class: instantiated once
            "summary": f"{module}:fake_summary",  # tries to replace a built-in
            "twin": f"{module}:first",
            "mismatch": f"{module}:mismatch",  # entry point and plugin names differ
            "broken": "fake_celeriac_missing:plugin",  # does not import
            "nothing": f"{module}:not_a_plugin",
        },
        datasets={"shout": f"{module}:Shout"},
    )  # an analyzer in the datasets group
    _distribution(site, "fake-b", {"twin": f"{module}:second"})
    with caplog.at_level(logging.WARNING, logger="celeriac.workers.compute.registry"):
        registry = discover()
    builtin_summary = importlib.import_module("celeriac.workers.compute.plugins.summary")
    assert registry.analyzer("summary") is builtin_summary.summary
    assert analyze_dataset("counting", pd.DataFrame({"x": [1, 2]}), registry=registry) == {
        "rows": 2,
        "by": "counting",
    }
    assert registry.sources[(ANALYZER, "counting")] == "fake-a 1.0"
    twin = registry.analyzer("twin")
    assert twin is sys.modules[module].first
    assert registry.sources[(ANALYZER, "twin")] == "fake-a 1.0"
    assert "mismatch" not in registry.analyzers
    assert "other_name" not in registry.analyzers
    assert "broken" not in registry.analyzers
    assert "nothing" not in registry.analyzers
    assert "shout" not in registry.datasets
    messages = [r.getMessage() for r in caplog.records]
    assert any("the name 'summary' is taken by a built-in" in m for m in messages), messages
    assert any("the name 'twin' is taken by fake-a 1.0" in m for m in messages), messages
    assert any("named 'mismatch' but the plugin 'other_name'" in m for m in messages)
    assert any("object is not an instance of Analyzer" in m for m in messages), messages
    assert any("Shout is not an instance of DatasetGenerator" in m for m in messages), messages
    assert any(
        r.getMessage().startswith("plugin entry point failed to load") and r.exc_info
        for r in caplog.records
    )
    assert all(r.levelno == logging.ERROR for r in caplog.records if r.name.endswith(".registry"))


def test_builtins_declared_as_entry_points_are_not_duplicates(
    site: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # What pyproject.toml's tables add: the same objects found a second way.
    analyzers = {n: ref for g, n, ref in BUILTINS if g == "celeriac.analyzers"}
    datasets = {n: ref for g, n, ref in BUILTINS if g == "celeriac.datasets"}
    _distribution(site, "fake-celeriac", analyzers, datasets=datasets)
    with caplog.at_level(logging.WARNING):
        registry = discover()
    assert not caplog.records
    assert registry.sources[(ANALYZER, "summary")] == "built-in"
    assert isinstance(registry.analyzer("keywords"), Analyzer)


def test_pyproject_declares_the_builtins_as_entry_points() -> None:
    config = tomllib.loads((REPO / "pyproject.toml").read_text())
    declared = config["project"]["entry-points"]
    expected = {
        group: {name: ref for g, name, ref in BUILTINS if g == group}
        for group in ("celeriac.datasets", "celeriac.analyzers")
    }
    assert {g: dict(declared[g]) for g in expected} == expected
