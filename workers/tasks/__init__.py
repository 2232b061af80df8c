"""Celery tasks, one module per pool; each task is a thin shell over the steps of
``celeriac.workers.flow`` and names itself from :class:`~celeriac.platform.queues.TaskName`."""
