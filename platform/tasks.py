"""Celery configuration and publishing by task name, shared by the API and the workers.

The API publishes with a client-only Celery app that knows no task code: it sends
:attr:`TaskName.START_JOB` by name, and :class:`Publisher` puts it in the tenant's queue.
The workers build their app from the same configuration (``celeriac.workers.celery_app``)
and publish through the same :class:`Publisher` on their own app.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from celery import Celery
from sqlalchemy.orm import Session

from celeriac.platform.broker import broker_transport_options
from celeriac.platform.db import run_after_commit
from celeriac.platform.dispatch import get_dispatcher
from celeriac.platform.models import Priority
from celeriac.platform.queues import TASK_ROUTES, Pool, TaskName, TenantQueue, queue_for
from celeriac.platform.settings import Settings, get_settings

logger = logging.getLogger(__name__)


def celery_config(settings: Settings) -> dict[str, Any]:
    """Celery's configuration, derived from the settings object."""
    transport_options = broker_transport_options(settings)
    return {
        "broker_url": settings.broker_url,
        "broker_transport_options": transport_options,
        "broker_connection_retry_on_startup": True,
        "result_backend": settings.celery_result_backend,
        "result_backend_transport_options": {
            k: v for k, v in transport_options.items() if k == "visibility_timeout"
        },
        "result_expires": 24 * 3600,
        # Celery keeps a result backend per thread unless told it is thread-safe, and under
        # gevent a thread is a greenlet: every task built a new Redis backend (and pool)
        # just to return an AsyncResult from send_task. redis-py's pool is thread-safe.
        "result_backend_thread_safe": settings.celery_result_backend.startswith(
            ("redis://", "rediss://")
        ),
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        "task_routes": TASK_ROUTES,
        "task_default_queue": Pool.ORCHESTRATION.value,
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "task_ignore_result": True,
        "worker_prefetch_multiplier": 1,
        "worker_hijack_root_logger": False,
        "worker_cancel_long_running_tasks_on_connection_loss": True,
        "worker_send_task_events": False,
        "task_soft_time_limit": settings.workers.compute_soft_time_limit,
        "task_time_limit": settings.workers.compute_hard_time_limit,
        "beat_schedule": {},
        "timezone": "UTC",
        "enable_utc": True,
    }


@lru_cache(maxsize=1)
def publisher_app() -> Celery:
    """A client-only Celery app for publishing by name (no task modules imported)."""
    app = Celery("celeriac-publisher", set_as_current=False)
    app.conf.update(celery_config(get_settings()))
    return app


@dataclass(frozen=True)
class Publication:
    """One task of a tenant's job to publish (see :meth:`Publisher.publish_many`)."""

    # A TaskName; a plain name for tasks a worker loads with ``--include`` (the benches'
    # bench.noop), routed by the same glob.
    name: TaskName | str
    band: Priority | str
    tenant_slug: str
    kwargs: dict[str, Any]
    message_id: str | None = None  # Celery's task id, when the caller chose it


class Publisher:
    """Publishes tenant work by task name: the pool comes from Celery's ``task_routes``
    glob table (:data:`~celeriac.platform.queues.TASK_ROUTES`); the publisher only adds
    the band and the tenant. On a Redis broker a task goes to its tenant queue and the fair
    dispatcher releases it into the pool's queue; on other brokers (the embedded
    filesystem) Celery routes it straight to the pool queue.

    The API publishes with the client-only app; a worker process installs its own app
    (:func:`use_app`), so its publications share the worker's connections. Tests pass a
    subclass that records instead (``tests/support.py``)."""

    def __init__(self, app: Celery | None = None) -> None:
        self._app = app
        self._pools: dict[str, Pool] = {}

    @property
    def app(self) -> Celery:
        return self._app if self._app is not None else publisher_app()

    def pool_of(self, name: TaskName | str) -> Pool:
        """The pool Celery's routing table sends ``name`` to."""
        pool = self._pools.get(name)
        if pool is None:
            route = self.app.amqp.router.route({}, str(name))
            pool = self._pools[name] = Pool(route["queue"].name)
        return pool

    def publish(self, publication: Publication) -> str:
        """Send one task; returns its Celery task id."""
        return self.publish_many([publication])[0]

    def publish_many(self, publications: Sequence[Publication]) -> list[str]:
        """Send several tasks over one producer, then release each pool's new backlogs in
        one dispatcher call: what :meth:`publish` does per task, at a batch's cost."""
        if not publications:
            return []
        app = self.app
        dispatcher = get_dispatcher()
        added: defaultdict[Pool, set[TenantQueue]] = defaultdict(set)
        ids = []
        with app.producer_or_acquire() as producer:
            for item in publications:
                options: dict[str, Any] = {}
                if dispatcher is not None:
                    pool = self.pool_of(item.name)
                    queue = queue_for(pool, item.band, item.tenant_slug)
                    added[pool].add(queue)
                    options["queue"] = queue.name
                result = app.send_task(
                    str(item.name),
                    kwargs=item.kwargs,
                    ignore_result=True,
                    producer=producer,
                    task_id=item.message_id,
                    **options,
                )
                ids.append(str(result.id))
        if dispatcher is not None:
            for pool, queues in added.items():
                dispatcher.release(pool, sorted(queues))
        return ids

    def publish_or_leave(self, publications: Sequence[Publication]) -> list[str]:
        """Publish, or log and leave the work to the reconciler: the rows that call for
        these tasks are committed, and beat re-dispatches what stopped moving."""
        try:
            return self.publish_many(publications)
        except Exception:
            logger.exception(
                "publishing %d task(s) failed; the reconciler re-dispatches them",
                len(publications),
                extra={"tasks": sorted({str(p.name) for p in publications})},
            )
            return []

    def after_commit(self, session: Session, publications: Sequence[Publication]) -> None:
        """Publish once ``session`` commits (never if it rolls back): tasks are sent only
        for rows that exist."""
        pending = list(publications)

        def publish() -> None:
            self.publish_or_leave(pending)

        if pending:
            run_after_commit(session, publish)


_DEFAULT: list[Publisher] = []


def default_publisher() -> Publisher:
    """This process's publisher: the API's client-only app, or the worker's own app once
    the worker installed it with :func:`use_app`."""
    if not _DEFAULT:
        _DEFAULT.append(Publisher())
    return _DEFAULT[0]


def use_app(app: Celery) -> None:
    """Publish with ``app`` from now on (a worker process, with its own Celery app)."""
    _DEFAULT[:] = [Publisher(app)]


def reset_default_publisher() -> None:
    """Forget the process's publisher (tests that change the settings)."""
    _DEFAULT.clear()
    publisher_app.cache_clear()
