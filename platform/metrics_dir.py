"""Where prometheus-client keeps its multiprocess files, set before it is first imported.

prometheus-client chooses, once, when it is imported, whether values live in memory or in
files (``PROMETHEUS_MULTIPROC_DIR``). :mod:`celeriac.platform.metrics` imports it and
builds its families, so this module is apart from it and imports nothing of it: the CLI
called ``metrics.prepare_multiprocess_dir`` and so set the variable too late, and a
single-process ``celeriac api`` (``celeriac up``'s) served an empty ``/metrics``.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def prepare_multiprocess_dir(path: Path) -> None:
    """Wipe and create ``path`` and point prometheus-client at it, for this process and
    the children it starts. Must run before anything imports prometheus-client: the CLI
    calls it first thing (files of an earlier run would be added to this one's)."""
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True, exist_ok=True)
    os.environ[MULTIPROC_ENV] = str(path)
