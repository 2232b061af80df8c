"""Celery configuration and publishing by task name, shared by the API and the workers.

The API publishes with a client-only Celery app that knows no task code: it sends
``celeriac.orchestration.start_job`` by name to the tenant's queue. The workers build
their app from the same configuration (``celeriac.workers.celery_app``).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from celery import Celery

from celeriac.platform.broker import broker_transport_options
from celeriac.platform.dispatch import get_dispatcher
from celeriac.platform.models import Priority
from celeriac.platform.queues import TenantQueue, queue_for
from celeriac.platform.settings import Pool, Settings, get_settings

START_JOB = "celeriac.orchestration.start_job"
CANCEL_JOB = "celeriac.orchestration.cancel_job"


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
        "task_routes": {f"celeriac.{pool.value}.*": {"queue": pool.value} for pool in Pool},
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
def publisher() -> Celery:
    """A client-only Celery app for publishing by name (no task modules imported)."""
    app = Celery("celeriac-publisher", set_as_current=False)
    app.conf.update(celery_config(get_settings()))
    return app


def pool_of(task_name: str) -> Pool:
    """Task names carry their pool: ``celeriac.<pool>.<name>``."""
    return Pool(task_name.split(".")[1])


def publish(
    name: str,
    *,
    band: Priority | str,
    tenant_slug: str,
    kwargs: dict[str, Any],
    app: Celery | None = None,
) -> str:
    """Send task ``name`` of a tenant's job; returns the Celery task id.

    On a Redis broker it goes to the tenant's queue and the fair dispatcher releases it
    into the pool's ready queue; on other brokers (the embedded filesystem) straight to the
    pool queue.
    """
    return publish_many([Publication(name, band, tenant_slug, kwargs)], app)[0]


@dataclass(frozen=True)
class Publication:
    """One task of a tenant's job to publish (see :func:`publish_many`)."""

    name: str
    band: Priority | str
    tenant_slug: str
    kwargs: dict[str, Any]
    task_id: str | None = None  # Celery's message id, when the caller chose it


def publish_many(publications: Sequence[Publication], app: Celery | None = None) -> list[str]:
    """Send several tasks over one producer, then release each pool's new backlogs in one
    dispatcher call: what :func:`publish` does per task, at a batch's cost."""
    if not publications:
        return []
    app = app or publisher()
    dispatcher = get_dispatcher()
    added: defaultdict[Pool, set[TenantQueue]] = defaultdict(set)
    ids = []
    with app.producer_or_acquire() as producer:
        for item in publications:
            pool = pool_of(item.name)
            queue_name = pool.value
            if dispatcher is not None:
                queue = queue_for(pool, item.band, item.tenant_slug)
                added[pool].add(queue)
                queue_name = queue.name
            result = app.send_task(
                item.name, kwargs=item.kwargs, queue=queue_name, ignore_result=True,
                producer=producer, task_id=item.task_id,
            )  # fmt: skip
            ids.append(str(result.id))
    if dispatcher is not None:
        for pool, queues in added.items():
            dispatcher.release(pool, sorted(queues))
    return ids
