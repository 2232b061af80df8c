"""The progress display of ``job.wait(progress=True)``: a rich bar per stage when rich is
installed (``celeriac-client[progress]``), tqdm's when that is, else a plain line on stderr."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from typing import Any, Protocol

from celeriac.client.models import JobEvent


class ProgressDisplay(Protocol):
    def update(self, event: JobEvent) -> None: ...
    def close(self) -> None: ...


class _Callback:
    def __init__(self, callback: Callable[[JobEvent], Any]) -> None:
        self.callback = callback

    def update(self, event: JobEvent) -> None:
        self.callback(event)

    def close(self) -> None:
        pass


class _Rich:
    def __init__(self, job_id: str) -> None:
        # Imported here: rich is optional.
        from rich.console import Console  # noqa: PLC0415
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn  # noqa: PLC0415

        self.job_id = job_id
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[state]}"),
            console=Console(stderr=True),
        )
        self.tasks: dict[str, Any] = {}
        self.progress.start()

    def update(self, event: JobEvent) -> None:
        stage = event.stage or "job"
        if stage not in self.tasks:
            self.tasks[stage] = self.progress.add_task(stage, total=event.total, state="")
        self.progress.update(
            self.tasks[stage], completed=event.done or 0, total=event.total, state=event.state.value
        )

    def close(self) -> None:
        self.progress.stop()


class _Tqdm:
    # ARG002: every display is built with the job's id
    def __init__(self, job_id: str) -> None:  # noqa: ARG002
        self.bars: dict[str, Any] = {}

    def update(self, event: JobEvent) -> None:
        tqdm = importlib.import_module("tqdm").tqdm  # optional, and without type hints
        stage = event.stage or "job"
        if stage not in self.bars:
            self.bars[stage] = tqdm(total=event.total, desc=stage, unit="task")
        bar = self.bars[stage]
        bar.total = event.total
        bar.n = event.done or 0
        bar.set_postfix_str(event.state.value)

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()


class _Plain:
    def __init__(self, job_id: str) -> None:
        self.job_id = job_id

    def update(self, event: JobEvent) -> None:
        where = f" {event.stage} {event.done}/{event.total}" if event.stage else ""
        failed = f" ({event.failed} failed)" if event.failed else ""
        # T201: the plain display is lines on stderr.
        print(f"job {self.job_id}: {event.state.value}{where}{failed}", file=sys.stderr)  # noqa: T201

    def close(self) -> None:
        pass


def progress_display(
    progress: bool | Callable[[JobEvent], Any], job_id: str
) -> ProgressDisplay | None:
    """The display ``wait(progress=...)`` feeds: None for False, the callable itself for a
    callable (it gets each :class:`JobEvent`), a bar for True."""
    if not isinstance(progress, bool):
        return _Callback(progress)
    if not progress:
        return None
    for module, display in (("rich", _Rich), ("tqdm", _Tqdm)):
        try:
            __import__(module)
        except ImportError:
            continue
        return display(job_id)
    return _Plain(job_id)
