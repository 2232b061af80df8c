"""A task revoked before it runs (its ``expires`` passed while it waited, or revoked by
id) ends through Celery's ``task_revoked`` signal, whose ``request`` is the task's
Context, not the worker's Request (celery/worker/request.py sends the task as the
sender). Two handlers read ``request.task_name`` and raised AttributeError on every
revoked task: a traceback in a fresh ``celeriac up``'s log, and the fair dispatcher's
busy count was left one too high (its -1 never ran)."""

from __future__ import annotations

import uuid

from celery import signals
from celery.app.task import Context

from celeriac.platform.queues import TaskName
from celeriac.platform.settings import Settings


def test_every_revoked_handler_takes_celerys_context(api_settings: Settings) -> None:
    from celeriac.workers.celery_app import app

    app.loader.import_default_modules()
    task = app.tasks[TaskName.START_JOB.value]
    request = Context(id=str(uuid.uuid4()), kwargs={"tenant_id": "t"}, hostname="w@host")
    answers = signals.task_revoked.send(
        sender=task, request=request, terminated=False, signum=None, expired=True
    )
    ours = [
        (receiver, answer)
        for receiver, answer in answers
        if getattr(receiver, "__module__", "").startswith("celeriac.")
    ]
    assert len(ours) >= 2  # the dispatcher's slot count and the task telemetry
    assert [answer for _, answer in ours if isinstance(answer, BaseException)] == []
