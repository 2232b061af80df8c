"""The Celery app, configured from Celeriac's settings and nothing else.

Start workers through ``celeriac worker --pool ...``; it runs
``celery -A celeriac.workers.celery_app worker`` with the pool's options. Each worker
consumes only its pool's ready queue (``compute`` etc.); tenant queues are fed into it by
the fair dispatcher (``celeriac.platform.dispatch``).
"""

from __future__ import annotations

import gc
import logging
from typing import Any

import sentry_sdk
from celery import Celery, bootsteps, signals
from celery.worker import state as worker_state

from celeriac.platform import metrics
from celeriac.platform.db import get_engine, transaction
from celeriac.platform.dispatch import get_dispatcher
from celeriac.platform.logging import bind_context, clear_context, demote_to_debug
from celeriac.platform.observability import init_process, init_sentry
from celeriac.platform.queues import Pool, TaskName
from celeriac.platform.settings import Settings, get_settings
from celeriac.platform.tasks import celery_config, default_publisher, use_app
from celeriac.workers import telemetry
from celeriac.workers.health import LivenessHeartbeat

logger = logging.getLogger(__name__)

TASK_MODULES = [
    "celeriac.workers.tasks.ping",
    "celeriac.workers.tasks.orchestration",
    "celeriac.workers.tasks.distribution",
    "celeriac.workers.tasks.compute",
    "celeriac.workers.tasks.maintenance",
]
CAPACITY_HEARTBEAT_SECONDS = 5.0
# Monthly job counters are compared with the usage records this often (drift needs two runs).
QUOTA_COUNTERS_INTERVAL_SECONDS = 300.0


def pool_of_worker(hostname: str) -> Pool | None:
    """``celeriac worker`` names workers ``<pool>@<host>``."""
    try:
        return Pool(hostname.split("@", 1)[0])
    except ValueError:
        return None


class CapacityHeartbeat(bootsteps.StartStopStep):
    """Announces this worker's slots to the fair dispatcher while it lives, so the pool's
    ready queue is kept about as deep as the slots that can take from it."""

    requires = ("celery.worker.components:Timer",)

    # ARG002: Celery's bootstep signature
    def __init__(self, worker: Any, **kwargs: Any) -> None:  # noqa: ARG002
        self.tref: Any = None
        self.pool: Pool | None = None
        self.mismatch: tuple[int, int] | None = None

    def start(self, worker: Any) -> None:
        self.pool = pool_of_worker(worker.hostname)
        if self.pool is None or get_dispatcher() is None:
            return
        self._announce(worker)
        self.tref = worker.timer.call_repeatedly(
            CAPACITY_HEARTBEAT_SECONDS, self._announce, (worker,), priority=10
        )

    def _announce(self, worker: Any) -> None:
        dispatcher = get_dispatcher()
        if dispatcher is not None and self.pool is not None:
            try:
                dispatcher.register_capacity(
                    self.pool, worker.hostname, worker.concurrency, busy=self._resync(worker)
                )
                dispatcher.release(self.pool)
            except Exception:  # the broker is briefly away; the next beat retries
                logger.warning("capacity heartbeat failed", exc_info=True)

    def _resync(self, worker: Any) -> int | None:
        """The busy count to write back, when the shared count has drifted from the tasks
        this worker holds (a child killed before it could count its finish). A difference
        seen once may be a finish in flight (the child counts it before the parent forgets
        the task), so the count is corrected only when the same difference is seen on two
        heartbeats in a row."""
        dispatcher = get_dispatcher()
        if dispatcher is None or self.pool is None:
            return None
        held = len(worker_state.reserved_requests)
        shared = dispatcher.busy(self.pool, worker.hostname)
        if shared == held:
            self.mismatch = None
            return None
        seen, self.mismatch = self.mismatch, (shared, held)
        return held if seen == (shared, held) else None

    def stop(self, worker: Any) -> None:
        if self.tref is not None:
            self.tref.cancel()
        dispatcher = get_dispatcher()
        if dispatcher is not None and self.pool is not None:
            try:
                dispatcher.withdraw_capacity(self.pool, worker.hostname)
            except Exception:
                logger.warning("could not withdraw capacity", exc_info=True)


# How often beat finishes the destruction of deleted tenants (retries included).
TENANT_DESTRUCTION_INTERVAL_SECONDS = 60.0


def create_celery_app(settings: Settings | None = None) -> Celery:
    settings = settings or get_settings()
    celery_app = Celery("celeriac", set_as_current=True)
    celery_app.conf.update(celery_config(settings))
    celery_app.conf.include = TASK_MODULES
    celery_app.conf.beat_schedule = {
        "reconcile": {
            "task": TaskName.RECONCILE,
            "schedule": settings.jobs.reconcile_interval_seconds,
            "options": {"expires": settings.jobs.reconcile_interval_seconds},
        },
        "release": {
            "task": TaskName.RELEASE,
            "schedule": 1.0,
            "options": {"expires": 1.0},
        },
        "webhooks": {
            "task": TaskName.DELIVER_DUE_WEBHOOKS,
            "schedule": settings.webhooks.scan_interval_seconds,
            "options": {"expires": settings.webhooks.scan_interval_seconds},
        },
        "destroy-deleted-tenants": {
            "task": TaskName.DESTROY_DELETED_TENANTS,
            "schedule": TENANT_DESTRUCTION_INTERVAL_SECONDS,
            "options": {"expires": TENANT_DESTRUCTION_INTERVAL_SECONDS},
        },
        "expire-job-data": {
            "task": TaskName.EXPIRE_JOB_DATA,
            "schedule": settings.jobs.retention_sweep_seconds,
            "options": {"expires": settings.jobs.retention_sweep_seconds},
        },
        "quota-counters": {
            "task": TaskName.RECONCILE_QUOTA_COUNTERS,
            "schedule": QUOTA_COUNTERS_INTERVAL_SECONDS,
            "options": {"expires": QUOTA_COUNTERS_INTERVAL_SECONDS},
        },
    }
    celery_app.steps["worker"].add(CapacityHeartbeat)
    # Liveness for the probes (celeriac.workers.health): a heartbeat file per process.
    celery_app.steps["worker"].add(LivenessHeartbeat)
    celery_app.conf.beat_scheduler = "celeriac.workers.health:HeartbeatScheduler"
    return celery_app


app = create_celery_app()
# Work this process publishes goes out on the worker's own app (its connections).
use_app(app)


# Periodic tasks that run every few seconds: their lines are written at DEBUG.
HOUSEKEEPING = frozenset(
    {
        TaskName.RELEASE.value,
        TaskName.DELIVER_DUE_WEBHOOKS.value,
        TaskName.RECONCILE.value,
        "release",
        "webhooks",
        "reconcile",
    }  # beat's entry names (its "Sending due task" line)
)


@signals.setup_logging.connect
def _setup_logging(**_: Any) -> None:
    # Connecting here stops Celery from configuring logging its own way. Runs in the
    # worker's main process and in beat (prefork children: worker_process_init).
    init_process(get_settings(), "worker")
    demote_to_debug(HOUSEKEEPING)


@signals.worker_init.connect
def _serve_metrics(sender: Any = None, **_: Any) -> None:
    pool = pool_of_worker(getattr(sender, "hostname", ""))
    if pool is not None:
        sentry_sdk.set_tag("pool", pool.value)
        telemetry.serve_worker_metrics(sender, pool.value)


@signals.beat_init.connect
def _serve_beat_metrics(**_: Any) -> None:
    sentry_sdk.set_tag("component", "beat")
    telemetry.serve_beat_metrics()


@signals.worker_process_init.connect
def _init_child_process(**_: Any) -> None:
    # A prefork child reports errors from its own Sentry client (tags: the compute pool).
    init_sentry(get_settings(), "worker", pool=Pool.COMPUTE.value)


@signals.worker_process_shutdown.connect
def _child_exits(**_: Any) -> None:
    metrics.process_exited()  # its live gauges leave the sum (prometheus multiprocess)


@signals.worker_init.connect
def _import_plugins_before_fork(sender: Any = None, **_: Any) -> None:
    # The compute pool's parent imports the plugins (pandas, scikit-learn: seconds) once,
    # so that prefork children inherit them instead of importing them each.
    if pool_of_worker(getattr(sender, "hostname", "")) is Pool.COMPUTE:
        # Imported here: the compute pool only (pandas, the plugins).
        import celeriac.workers.flow.compute  # noqa: F401, PLC0415 - the compute steps (pandas)
        from celeriac.workers.compute import get_registry  # noqa: PLC0415

        get_registry()


@signals.worker_process_init.connect
def _load_plugins(**_: Any) -> None:
    # Prefork children only (the compute pool). A child must not use the database
    # connections it inherited from its parent (two processes on one socket): drop them
    # without closing them, as SQLAlchemy prescribes after a fork.
    # Imported here: the compute pool only (pandas, the plugins).
    from celeriac.workers.compute import setup_plugins  # noqa: PLC0415

    get_engine().dispose(close=False)
    setup_plugins()
    # What is loaded by now (pandas, scikit-learn, lexicons) lives as long as the process:
    # out of the collector's reach, collections while a task builds 100,000-row datasets
    # no longer walk it (records + generators of a 100,000-record job: 1.54 s of CPU,
    # 1.33 s frozen). Forked children also keep sharing those pages with their parent.
    gc.freeze()


@signals.worker_ready.connect
def _publish_registry(sender: Any = None, **_: Any) -> None:
    if pool_of_worker(getattr(sender, "hostname", "")) is not Pool.COMPUTE:
        return
    # Imported here: the compute pool only (pandas, the plugins).
    from celeriac.platform.jobs.pipelines import register_plugins  # noqa: PLC0415
    from celeriac.workers.compute import get_registry  # noqa: PLC0415

    with transaction() as session:
        register_plugins(session, get_registry().plugin_infos())
    # Children forked later (max_tasks_per_child) must not inherit this connection.

    get_engine().dispose()
    logger.info("plugin registry published")


def _count(task_name: str, hostname: str, busy: int) -> None:
    dispatcher = get_dispatcher()
    if dispatcher is None:
        return
    try:
        dispatcher.release(default_publisher().pool_of(task_name), host=hostname, busy=busy)
    except Exception:
        logger.warning("dispatcher update failed", exc_info=True)


@signals.task_received.connect
def _took_a_task(request: Any = None, **_: Any) -> None:
    # A slot is taken: count it (the ready queue is kept as deep as the free slots).
    if request is not None:
        _count(request.task_name, request.hostname or "", +1)


@signals.task_postrun.connect
def _freed_a_slot(sender: Any = None, **_: Any) -> None:
    # A slot is free again: count it and release the next task into the ready queue.
    if sender is not None:
        _count(sender.name, sender.request.hostname or "", -1)


@signals.task_revoked.connect
def _revoked(sender: Any = None, request: Any = None, **_: Any) -> None:
    # Celery sends the task as sender and the request's Context (no ``task_name``; the
    # name is ``request.task``) from the worker's main process.
    if sender is not None and request is not None:
        _count(sender.name, request.hostname or "", -1)


@signals.task_prerun.connect
def _bind_task_context(
    sender: Any = None, task_id: str | None = None, kwargs: Any = None, **_: Any
) -> None:
    args = kwargs if isinstance(kwargs, dict) else {}
    bind_context(
        task_id=task_id,
        tenant_id=args.get("tenant_id"),
        job_id=args.get("job_id"),
        task=getattr(sender, "name", None),
    )


@signals.task_postrun.connect
def _clear_task_context(**_: Any) -> None:
    clear_context()
