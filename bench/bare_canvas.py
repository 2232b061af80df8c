"""The bare Celery canvas ``latency.py`` compares Celeriac with, loaded into the very same
worker processes with ``--include bare_canvas`` (bench/ on PYTHONPATH).

Shape, as a Celeriac job of two datasets and four analysis tasks:
``chord(group(2 x dataset), chord(group(4 x analysis), finalize))``; dataset and analysis
tasks go to the ``compute`` queue, ``finalize`` to ``distribution``. No database, no blob
store: data travels in messages and in the Redis result backend, chords are joined by
Celery's Redis chord counter.

With ``records`` given, the tasks run the same plugin code a Celeriac job runs
(``generate_partial`` per dataset, then ``combine_partials`` and ``analyze_dataset`` per
analysis; the partial goes between them as Parquet, base64 in the result); without,
they only note their start and end times. Task names carry their pool
(``bench.<pool>.<name>``) like Celeriac's, so the workers' receive hook
(``celeriac.platform.tasks.pool_of``) treats both alike.
"""

from __future__ import annotations

import base64
import io
import json
import time
from typing import Any

from celery import shared_task

DATASET = "bench.compute.dataset"
ANALYSIS = "bench.compute.analysis"
FINALIZE = "bench.distribution.finalize"


@shared_task(name=DATASET, ignore_result=False)
def dataset(
    name: str, records: list[dict[str, Any]] | None = None, params: dict[str, Any] | None = None
) -> dict[str, Any]:
    started = time.time()
    out: dict[str, Any] = {"name": name, "t0": started}
    if records is not None:
        # Imported here: every pool loads this module (--include); pandas, the compute pool only.
        from celeriac.workers.compute import generate_partial  # noqa: PLC0415

        frame = generate_partial(name, records, params)
        buffer = io.BytesIO()
        frame.to_parquet(buffer, index=False)
        out["parquet"] = base64.b64encode(buffer.getvalue()).decode()
    out["t1"] = time.time()
    return out


@shared_task(name=ANALYSIS, ignore_result=False)
def analysis(
    datasets: list[dict[str, Any]],
    analyzer: str,
    dataset: str,
    params: dict[str, Any] | None = None,
    dataset_params: dict[str, Any] | None = None,
) -> dict[str, Any]:
    started = time.time()
    produced = next(d for d in datasets if d["name"] == dataset)
    result = None
    if "parquet" in produced:
        # Imported here: every pool loads this module (--include); pandas, the compute pool only.
        import pandas as pd  # noqa: PLC0415

        from celeriac.workers.compute import analyze_dataset, combine_partials  # noqa: PLC0415

        partial = pd.read_parquet(io.BytesIO(base64.b64decode(produced["parquet"])))
        frame = combine_partials(dataset, [partial], dataset_params)
        result = analyze_dataset(analyzer, frame, params)
    times = [{"name": d["name"], "t0": d["t0"], "t1": d["t1"]} for d in datasets]
    return {
        "analyzer": analyzer,
        "dataset": dataset,
        "result": result,
        "datasets": times,
        "t0": started,
        "t1": time.time(),
    }


@shared_task(name=FINALIZE, ignore_result=False)
def finalize(analyses: list[dict[str, Any]]) -> dict[str, Any]:
    started = time.time()
    document: dict[str, Any] = {}
    for entry in analyses:
        document.setdefault(entry["analyzer"], {})[entry["dataset"]] = entry["result"]
    body = json.dumps({"analyses": document}, separators=(",", ":"))
    return {
        "bytes": len(body),
        "datasets": analyses[0]["datasets"] if analyses else [],
        "analyses": [{"t0": a["t0"], "t1": a["t1"]} for a in analyses],
        "t0": started,
        "t1": time.time(),
    }
