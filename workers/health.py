"""Liveness heartbeats of the worker pools and beat, for Kubernetes and Compose probes.

Each process touches a file under ``<var_dir>/heartbeat/`` from its own loop: a worker from
its timer (driven by the consumer's event loop, so a frozen or wedged loop stops it), beat
from its scheduler's tick. ``docker/celeriac-alive FILE MAX_AGE`` (in the image) checks the
file's age with plain ``sh``: no Python start-up and no broker round trip per probe, unlike
``celery inspect ping`` (see docs/adr/0014-deployment-image-probes-and-operations.md).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from celery import bootsteps
from celery.beat import PersistentScheduler

from celeriac.platform.settings import Settings, get_settings

logger = logging.getLogger(__name__)
# A blueprint's state while it runs (celery.bootsteps; not in the type stubs).
RUNNING: int = bootsteps.RUN  # type: ignore[attr-defined]


def heartbeat_path(settings: Settings, name: str) -> Path:
    """Where process ``name`` (a pool's name, or ``beat``) keeps its heartbeat."""
    return settings.var_dir / "heartbeat" / name


def touch(path: Path) -> None:
    """Mark ``path`` fresh (create it on the first beat)."""
    try:
        os.utime(path)
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()


def forget(path: Path) -> None:
    """Remove a heartbeat left by an earlier run of the container: Kubernetes keeps an
    ``emptyDir`` across container restarts, and a fresh old file would pass the startup
    probe before this run is up."""
    path.unlink(missing_ok=True)


class LivenessHeartbeat(bootsteps.StartStopStep):
    """Touches ``<var_dir>/heartbeat/<pool>`` while the worker's consumer is running.

    A step of its own rather than part of ``CapacityHeartbeat``: that one runs only with the
    fair dispatcher (a Redis broker) and talks to Redis; liveness must hold on every broker
    and must not fail because Redis is briefly away."""

    requires = ("celery.worker.components:Timer",)

    # ARG002: Celery's bootstep signature
    def __init__(self, worker: Any, **kwargs: Any) -> None:  # noqa: ARG002
        self.tref: Any = None
        self.path = heartbeat_path(get_settings(), worker.hostname.split("@", 1)[0])

    def start(self, worker: Any) -> None:
        forget(self.path)
        self.tref = worker.timer.call_repeatedly(
            get_settings().workers.heartbeat_seconds, self._beat, (worker,), priority=10
        )

    def _beat(self, worker: Any) -> None:
        consumer = getattr(worker, "consumer", None)
        # Only once the consumer runs (the startup probe waits for that) and while it does.
        if consumer is not None and consumer.blueprint.state == RUNNING:
            try:
                touch(self.path)
            except OSError:
                logger.warning("could not touch the liveness heartbeat", exc_info=True)

    def stop(self, worker: Any) -> None:  # noqa: ARG002 - Celery's bootstep signature
        if self.tref is not None:
            self.tref.cancel()


class HeartbeatScheduler(PersistentScheduler):
    """Celery beat's persistent scheduler that touches ``<var_dir>/heartbeat/beat`` at every
    tick (at least once a second: the dispatcher's release tick is due every second)."""

    def setup_schedule(self) -> None:
        self._heartbeat = heartbeat_path(get_settings(), "beat")
        forget(self._heartbeat)
        super().setup_schedule()

    def tick(self, *args: Any, **kwargs: Any) -> float:
        interval: float = super().tick(*args, **kwargs)
        try:
            touch(self._heartbeat)
        except OSError:
            logger.warning("could not touch the liveness heartbeat", exc_info=True)
        return interval
