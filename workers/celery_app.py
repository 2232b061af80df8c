"""The Celery app, configured from Celeriac's settings and nothing else.

Start workers through ``celeriac worker --pool ...``; it runs
``celery -A celeriac.workers.celery_app worker`` with the pool's options.
"""

from __future__ import annotations

from typing import Any

from celery import Celery, signals

from celeriac.platform.broker import broker_transport_options
from celeriac.platform.logging import bind_context, clear_context
from celeriac.platform.observability import init_process
from celeriac.platform.settings import Pool, Settings, get_settings


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


def create_celery_app(settings: Settings | None = None) -> Celery:
    settings = settings or get_settings()
    celery_app = Celery("celeriac", set_as_current=True)
    celery_app.conf.update(celery_config(settings))
    celery_app.autodiscover_tasks(["celeriac.workers"], related_name="tasks", force=True)
    return celery_app


app = create_celery_app()


@signals.setup_logging.connect
def _setup_logging(**_: Any) -> None:
    # Connecting here stops Celery from configuring logging its own way.
    init_process(get_settings(), "worker")


@signals.task_prerun.connect
def _bind_task_context(task_id: str | None = None, kwargs: Any = None, **_: Any) -> None:
    args = kwargs if isinstance(kwargs, dict) else {}
    bind_context(task_id=task_id, tenant_id=args.get("tenant_id"), job_id=args.get("job_id"))


@signals.task_postrun.connect
def _clear_task_context(**_: Any) -> None:
    clear_context()
