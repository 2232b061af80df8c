"""Compute pool (prefork, late acks): one plugin run over one chunk or dataset."""

from __future__ import annotations

import logging
import random
import traceback
from typing import Any

import sentry_sdk
from celery import Task, shared_task
from celery.exceptions import Retry, SoftTimeLimitExceeded
from sqlalchemy.exc import DBAPIError

from celeriac.platform.models import TaskState
from celeriac.platform.queues import Pool, TaskName
from celeriac.platform.settings import get_settings
from celeriac.workers.telemetry import report_outcome

logger = logging.getLogger(__name__)


def backoff(retries: int) -> float:
    """Exponential backoff with +-50% jitter, capped."""
    jobs = get_settings().jobs
    delay = min(jobs.retry_backoff_max_seconds, jobs.retry_backoff_seconds * 2**retries)
    return float(delay * random.uniform(0.5, 1.5))  # noqa: S311 - jitter, not a secret


def _error_text(exc: BaseException) -> str:
    return "".join(traceback.format_exception_only(type(exc), exc)).strip()[:2000]


@shared_task(name=TaskName.RUN_TASK, bind=True)
def run_task(self: Task[Any, Any], tenant_id: str, job_id: str, task_id: str) -> None:
    """Run one compute task of a job, record its outcome, then join its stage.

    Transient failures are retried with backoff; after the last retry, or on any other
    error, the task is recorded failed and the job goes on without it. A task over its
    soft time limit is recorded as timed out. A message redelivered more often than
    ``jobs.task_max_deliveries`` (its worker keeps dying) is recorded failed."""
    # pandas is loaded only where compute runs: the compute pool imports the steps before
    # it forks (celery_app), the other pools register this task's name and never run it.
    from celeriac.workers.flow import compute as steps  # noqa: PLC0415

    claimed = steps.claim(tenant_id, task_id, str(self.request.id))
    if claimed is None:
        return  # finished, cancelled, or claimed by a sibling delivery
    limit = get_settings().jobs
    if claimed.attempts > limit.task_max_deliveries + limit.task_max_retries:
        outcome = TaskState.FAILED
        error: str | None = f"gave up after {claimed.attempts - 1} deliveries (worker lost)"
    else:
        outcome, error = TaskState.SUCCEEDED, None
        try:
            steps.compute(tenant_id, job_id, claimed)
        except steps.TransientError as exc:
            if self.request.retries < limit.task_max_retries:
                # Straight to the pool's ready queue: a retry already had its fair turn.
                raise self.retry(
                    exc=exc, countdown=backoff(self.request.retries), queue=Pool.COMPUTE.value
                ) from exc
            outcome, error = TaskState.FAILED, _error_text(exc)
        except SoftTimeLimitExceeded:
            outcome, error = TaskState.TIMED_OUT, "soft time limit exceeded"
        except Retry:
            raise
        except Exception as exc:
            # The class and the frames, not the message: a plugin's message can quote a
            # record's value (it is stored encrypted, celeriac.platform.jobs.task_errors).
            logger.warning(
                "compute task failed: %s\n%s",
                type(exc).__name__,
                "".join(traceback.format_tb(exc.__traceback__)).rstrip(),
            )
            # Sentry gets it once, with its stack trace; before_send drops the message.
            sentry_sdk.capture_exception(exc)
            outcome, error = TaskState.FAILED, _error_text(exc)
    report_outcome(outcome.value, claimed.plugin)
    try:
        steps.finish(tenant_id, job_id, claimed, outcome, error)
    except DBAPIError as exc:
        # The outcome could not be recorded (the database is away): the message comes back
        # with the same id, which the claim accepts as this run's, and the task runs again
        # (its output is deterministic) instead of staying running until its lease ends.
        raise self.retry(
            exc=exc,
            countdown=backoff(self.request.retries),
            queue=Pool.COMPUTE.value,
            max_retries=None,
        ) from exc
