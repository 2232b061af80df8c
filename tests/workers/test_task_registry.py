"""One registry of task names (``TaskName``): it is what the worker app registers, every
task routes to its pool by Celery's glob table, and no other module spells a name."""

from __future__ import annotations

import ast
from pathlib import Path

from celeriac.platform.queues import TASK_ROUTES, TaskName
from celeriac.platform.settings import get_settings
from celeriac.platform.tasks import Publisher, celery_config

REPO = Path(__file__).resolve().parents[2]


def _worker_app_tasks() -> set[str]:
    # Imported here: importing the worker app connects its signal handlers; only these tests
    # want them.
    from celeriac.workers.celery_app import app  # noqa: PLC0415

    app.loader.import_default_modules()
    return {name for name in app.tasks if name.startswith("celeriac.")}


def test_the_registry_is_what_the_worker_app_registers() -> None:
    assert _worker_app_tasks() == {name.value for name in TaskName}


def test_beat_schedules_only_registered_tasks() -> None:
    # Imported here: importing the worker app connects its signal handlers; only these tests
    # want them.
    from celeriac.workers.celery_app import app  # noqa: PLC0415

    scheduled = {entry["task"] for entry in app.conf.beat_schedule.values()}
    assert scheduled
    assert scheduled <= {name.value for name in TaskName}


def test_every_task_routes_to_its_pool_by_glob() -> None:
    """Celery's own router, fed the glob table alone, sends each task to its pool: the
    publisher adds only the band and the tenant."""
    assert celery_config(get_settings())["task_routes"] == TASK_ROUTES
    # Imported here: importing the worker app connects its signal handlers; only these tests
    # want them.
    from celeriac.workers.celery_app import app  # noqa: PLC0415

    publisher = Publisher(app)
    for name in TaskName:
        route = app.amqp.router.route({}, name.value)
        assert route["queue"].name == name.pool.value, name
        assert publisher.pool_of(name) is name.pool


def test_no_module_but_the_registry_spells_a_task_name() -> None:
    offenders = []
    for folder in ("platform", "workers"):
        for path in (REPO / folder).rglob("*.py"):
            if path == REPO / "platform" / "queues.py":
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                if (
                    isinstance(node, ast.Constant)
                    and isinstance(node.value, str)
                    and node.value.startswith(
                        ("celeriac.orchestration.", "celeriac.distribution.", "celeriac.compute.")
                    )
                ):
                    offenders.append(f"{path.relative_to(REPO)}:{node.lineno} {node.value}")
    assert offenders == []
