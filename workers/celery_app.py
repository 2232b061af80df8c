"""The Celery app, configured from Celeriac's settings and nothing else.

Start workers through ``celeriac worker --pool ...``; it runs
``celery -A celeriac.workers.celery_app worker`` with the pool's options.
"""

from __future__ import annotations

from typing import Any

from celery import Celery, signals

from celeriac.platform.logging import bind_context, clear_context
from celeriac.platform.observability import init_process
from celeriac.platform.settings import Settings, get_settings
from celeriac.platform.tasks import celery_config


TASK_MODULES = ["celeriac.workers.tasks.ping"]


def create_celery_app(settings: Settings | None = None) -> Celery:
    settings = settings or get_settings()
    celery_app = Celery("celeriac", set_as_current=True)
    celery_app.conf.update(celery_config(settings))
    celery_app.conf.include = TASK_MODULES
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
