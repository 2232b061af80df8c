"""A failed task's error, kept without record text in clear.

A plugin's exception message can quote a record's value (pandas: ``could not convert
string to float: '<value>'``). What is stored in clear in ``job_tasks.error`` is only the
exception's class and a fixed sentence; the message itself is encrypted under the
tenant's key (``job_tasks.error_detail``, the task id bound as encryption context) and
shown only to the tenant, in ``GET /v1/jobs/{id}``. Deleting the tenant destroys its key,
and with it every error detail.

The worker side calls :func:`seal` where a task's outcome is recorded; the API calls
:func:`reveal` where a job's errors are shown.
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from celeriac.platform.crypto.errors import CryptoError
from celeriac.platform.jobs.schemas import TaskError
from celeriac.platform.models import JobTask
from celeriac.platform.tenant_data import envelope

logger = logging.getLogger(__name__)

# The clear text of every stored task error: the class says what kind of failure it was
# (ValueError, TimeoutError, ...), the sentence says where the details are.
CLEAR_TEMPLATE = "{kind}: the task failed; the details are encrypted (GET /v1/jobs/{{id}})"
_MAX_DETAIL_CHARS = 4000


@dataclass(frozen=True)
class SealedError:
    """What to store for a failed task: the clear part and the encrypted details."""

    clear: str
    detail: bytes | None


def _context(task_id: str) -> dict[str, str]:
    return {"purpose": "task-error", "task_id": task_id}


def seal(tenant_id: str, task_id: str, kind: str, message: str | None) -> SealedError:
    """The stored form of a task's error: ``kind`` (an exception's class name) in clear,
    ``message`` (which may quote record values) encrypted under the tenant's key."""
    kind = kind if kind.isidentifier() else "Error"  # a class name, never free text
    clear = CLEAR_TEMPLATE.format(kind=kind)
    if not message:
        return SealedError(clear, None)
    detail = f"{kind}: {message}"[:_MAX_DETAIL_CHARS].encode("utf-8", "replace")
    return SealedError(clear, envelope().encrypt(tenant_id, detail, _context(task_id)))


def seal_exception(tenant_id: str, task_id: str, exc: BaseException) -> SealedError:
    """:func:`seal` of an exception: its class name and its message."""
    return seal(tenant_id, task_id, type(exc).__name__, str(exc))


# "ValueError: ..." or "pandas.errors.ParserError: ..." (traceback.format_exception_only)
_KIND_AND_MESSAGE = re.compile(r"(?s)([A-Za-z_][\w.]*)(?:: (.*))?")


def seal_text(tenant_id: str, task_id: str, error: str) -> SealedError:
    """:func:`seal` of an exception formatted as ``Kind: message``. Any other text is the
    platform's own (``soft time limit exceeded``, ``gave up after 3 deliveries``): it
    holds no record value and stays in clear, as it was written."""
    matched = _KIND_AND_MESSAGE.fullmatch(error)
    if matched is None:
        return SealedError(error, None)
    return seal(tenant_id, task_id, matched.group(1).rsplit(".", 1)[-1], matched.group(2))


def record(session: Session, tenant_id: str, task_id: str, error: str | None) -> str | None:
    """Store the encrypted details of ``task_id``'s error in the caller's transaction and
    return what to store in clear in ``job_tasks.error`` (the class and a fixed sentence)."""
    if error is None:
        return None
    sealed = seal_text(tenant_id, task_id, error)
    session.execute(
        update(JobTask)
        .where(JobTask.tenant_id == uuid.UUID(tenant_id), JobTask.id == uuid.UUID(task_id))
        .values(error_detail=sealed.detail)
        .execution_options(synchronize_session=False)
    )
    return sealed.clear


def detail_of(tenant_id: str, task: JobTask) -> str | None:
    """The decrypted details of ``task``'s error, or its clear part when there are none or
    they can no longer be read (the tenant's key destroyed)."""
    if task.error_detail is None:
        return task.error
    try:
        return envelope().decrypt(tenant_id, task.error_detail, _context(str(task.id))).decode()
    except CryptoError:
        logger.warning("the error details of task %s cannot be decrypted", task.id)
        return task.error


def reveal(
    session: Session, tenant_id: uuid.UUID, job_id: uuid.UUID, shown: Sequence[TaskError]
) -> None:
    """Replace the clear error of each task in ``shown`` by its decrypted details, for the
    tenant's own eyes (the caller is the authenticated tenant)."""
    tasks = session.scalars(
        select(JobTask).where(JobTask.tenant_id == tenant_id, JobTask.job_id == job_id,
                              JobTask.error_detail.is_not(None))
    ).all()  # fmt: skip
    by_place = {(t.stage, t.plugin, t.chunk): t for t in tasks}
    for item in shown:
        task = by_place.get((item.stage, item.plugin, item.chunk))
        if task is not None:
            item.error = detail_of(str(tenant_id), task)
