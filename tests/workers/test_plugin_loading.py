"""Process-wide plugin resources (the VADER lexicon) load once per process, never per task."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import textwrap
from typing import Any

import pandas as pd
import pytest

from celeriac.workers.compute import (
    Analyzer,
    NoParameters,
    Registry,
    analyze_dataset,
    build_dataset,
    setup_plugins,
)
from celeriac.workers.compute.plugins.sentiment import sentiment


def _run(code: str) -> list[Any]:
    """Run ``code`` in a fresh interpreter; each printed line is JSON."""
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


def test_setup_then_many_analyses_load_the_lexicon_once() -> None:
    setup_plugins()
    assert sentiment.loaded
    assert sentiment.loads == 1
    texts = build_dataset("text", [[{"text": "I love it!"}, {"text": "Awful service."}]])
    for _ in range(5):
        analyze_dataset("sentiment", texts)
        sentiment.analyze(texts, sentiment.parse_params({}))
    setup_plugins()
    assert sentiment.loads == 1


def test_processes_load_at_setup_and_never_again() -> None:
    # A fresh interpreter, then what Celery's prefork pool does: fork children that each
    # run worker_process_init (setup_plugins), then tasks. Not loaded in the parent: one
    # load per child, however many tasks it runs; loaded in the parent: inherited.
    lines = _run("""
        import json, multiprocessing, os
        from celeriac.workers.compute import Registry, analyze_dataset, setup_plugins
        from celeriac.workers.compute.plugins.sentiment import sentiment
        from celeriac.workers.compute.plugins.text import text, text_features
        import pandas as pd

        # Only these two plugins, so that the interpreter need not import scikit-learn.
        registry = Registry(datasets={"text": text}, analyzers={"sentiment": sentiment})
        texts = text_features(pd.Series(["Nice, I love it!", "Awful."]))

        def child(_):
            setup_plugins(registry)
            for _ in range(3):
                analyze_dataset("sentiment", texts, registry=registry)
            return os.getpid(), sentiment.loads

        fork = multiprocessing.get_context("fork")
        print(json.dumps([sentiment.loads, sentiment.loaded]))
        for parent_loads_first in (False, True):
            if parent_loads_first:
                setup_plugins(registry)
                print(json.dumps(sentiment.loads))
            with fork.Pool(2, maxtasksperchild=1) as pool:
                counts = pool.map(child, range(2), chunksize=1)
            print(json.dumps([len({pid for pid, _ in counts}), [n for _, n in counts]]))
        results = [analyze_dataset("sentiment", texts, registry=registry)["positive"]
                   for _ in range(2)]
        print(json.dumps([sentiment.loads, results]))
    """)
    assert lines == [[0, False], [2, [1, 1]], 1, [2, [1, 1]], [1, [1, 1]]]


def test_use_without_setup_loads_lazily_and_warns(caplog: pytest.LogCaptureFixture) -> None:
    loads: list[int] = []

    class Model(Analyzer[NoParameters]):
        name = "model"
        version = "1"
        parameters = NoParameters
        accepts = ("table",)

        def load(self) -> None:
            loads.append(1)

        def analyze(self, dataset: pd.DataFrame, params: NoParameters) -> dict[str, Any]:
            return {"loads": len(loads)}

    registry = Registry(datasets={}, analyzers={"model": Model()})
    with caplog.at_level(logging.WARNING, logger="celeriac.workers.compute.run"):
        first = analyze_dataset("model", pd.DataFrame(), registry=registry)
        second = analyze_dataset("model", pd.DataFrame(), registry=registry)
    assert first == second == {"loads": 1}
    assert [r.getMessage() for r in caplog.records] == [
        "plugin loaded on first use; call setup_plugins() at process start"
    ]


def test_a_failing_load_does_not_stop_setup_and_fails_on_use(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class Broken(Analyzer[NoParameters]):
        name = "broken"
        version = "1"
        parameters = NoParameters
        accepts = ("table",)

        def load(self) -> None:
            raise OSError("model file missing")

        def analyze(self, dataset: pd.DataFrame, params: NoParameters) -> dict[str, Any]:
            return {}

    registry = Registry(datasets={}, analyzers={"broken": Broken(), "summary": sentiment})
    with caplog.at_level(logging.ERROR):
        setup_plugins(registry)
    assert "plugin failed to load" in caplog.text
    with pytest.raises(OSError, match="model file missing"):
        analyze_dataset("broken", pd.DataFrame(), registry=registry)
