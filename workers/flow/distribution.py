"""Distribution pool (gevent): fan-out of a stage's compute tasks, the join when a stage
has none left, and finalize, which assembles the result document and ends the job. I/O
only: result documents are JSON, read and written without pandas.

Each step commits its own short transactions; between them it does I/O with no
transaction open.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from celeriac.platform.db import transaction
from celeriac.platform.jobs import lifecycle, payload, repository
from celeriac.platform.models import Job, JobStage, JobState, TaskState
from celeriac.platform.queues import TaskName
from celeriac.platform.tasks import Publication, Publisher, default_publisher
from celeriac.platform.tenant_data import tenant_blobs
from celeriac.workers.flow import plan


def fan_out(tenant_id: str, job_id: str, stage: str, publisher: Publisher | None = None) -> int:
    """Create the stage's tasks (once) and publish every open one; returns how many.

    The normal path does not come here: start and the stage join publish the stage's tasks
    themselves, in their own transaction (:func:`stage_publications`); ``fan_out`` is what
    the reconciler sends for a running job it found lost. Publishing an open task twice is
    harmless: the compute step claims it with a compare-and-set and the loser does
    nothing."""
    publisher = publisher or default_publisher()
    with transaction() as session:
        job = repository.load_job(session, tenant_id, job_id)
        if job is None or job.state is not JobState.RUNNING or job.stage is not JobStage(stage):
            return 0
        publications = stage_publications(session, job, JobStage(stage))
        publisher.after_commit(session, publications)
    return sum(1 for p in publications if p.name is TaskName.RUN_TASK)


def stage_publications(session: Session, job: Job, stage: JobStage) -> list[Publication]:
    """What runs ``stage`` of the running job, in the caller's transaction: the stage's
    compute tasks are inserted (once) and every open one that is due is returned for
    publication; a stage with no open task left is joined at once, and the next stage's
    publications are returned instead (finalize's message after the analysis stage).

    Start and the join call it in the transaction of their own transition, so a job's
    stage costs no transaction and no queue hop of its own (issue 16: a ``fan_out`` task
    per stage was 2 of a small job's 18 transactions, and two trips through the
    dispatcher)."""
    if stage is JobStage.FINALIZE:
        message = lifecycle.stage_message(lifecycle.ref_of(session, job), job.state, stage)
        return [message] if message is not None else []
    planned = plan.planned(job, stage)
    open_tasks, inserted = repository.ensure_tasks(session, job, planned)
    if not open_tasks:  # every task of the stage has ended: the join moves the job on
        if lifecycle.advance_if_done(session, job, stage) is None:
            return []
        return stage_publications(session, job, lifecycle.NEXT_STAGE[stage])
    lease = plan.lease_seconds()
    # A task that runs after others (a merge after its slices) waits for them: the last of
    # them to end publishes it (finish), or a later fan-out does.
    open_keys = {t.task_key for t in open_tasks}
    waiting = {p.key for p in planned if open_keys.intersection(p.after)}
    # A running task is republished only when its run has outlived any possible run.
    due = [
        t
        for t in open_tasks
        if t.task_key not in waiting
        and (t.state is TaskState.PENDING or repository.lease_expired(t, lease))
    ]
    order = {p.key: index for index, p in enumerate(planned)}
    due.sort(key=lambda t: order.get(t.task_key, len(order)))  # published in plan order
    message_ids = repository.assign_messages(session, due, inserted)
    ref = lifecycle.ref_of(session, job)
    return [
        ref.message(TaskName.RUN_TASK, message_id=message_ids[t.id], task_id=str(t.id)) for t in due
    ]


def finalize(tenant_id: str, job_id: str, publisher: Publisher | None = None) -> JobState | None:
    """Assemble the result document, then end the job (succeeded / partial / failed)
    through :func:`~celeriac.platform.jobs.lifecycle.end_job`, which records its usage and
    its event in the same transaction.

    One transaction, with the result blobs read and the document written inside it (a few
    milliseconds for a small job; a big job's result is one document per analysis, not per
    record): reading the tasks in a transaction of their own was one of a small job's 18
    transactions (issue 16). A second finalize that runs meanwhile (a redelivery) finds
    the job ended by the compare-and-set and writes nothing but the same document."""
    with transaction() as session:
        job = repository.load_job(session, tenant_id, job_id)
        if job is None or job.state is not JobState.RUNNING:
            return None
        tasks = repository.task_outcomes(session, job)
        results = {p.key: p for p in plan.planned(job, JobStage.ANALYSIS) if p.gives_result}
        failures = [t for t in tasks if t.state in (TaskState.FAILED, TaskState.TIMED_OUT)]
        compute_ms = sum(t.duration_ms or 0 for t in tasks)
        blobs = tenant_blobs()
        analyses: dict[str, dict[str, Any]] = {}
        for t in tasks:
            if t.task_key in results and t.state is TaskState.SUCCEEDED:
                analyzer, dataset = results[t.task_key].analyzer_and_dataset
                blob = blobs.get(tenant_id, t.output_key or "")
                analyses.setdefault(analyzer, {})[dataset] = payload.json_document(blob)
        if not analyses:
            outcome = JobState.FAILED
        elif failures:
            outcome = JobState.PARTIAL
        else:
            outcome = JobState.SUCCEEDED
        errors = [
            {
                "stage": t.stage.value,
                "plugin": t.plugin,
                "chunk": t.chunk,
                "state": t.state.value,
                "error": t.error,
            }
            for t in failures
        ]
        document = {
            "job_id": job_id,
            "state": outcome.value,
            "analyses": analyses,
            "errors": errors,
        }
        key = plan.result_key(job)
        written = blobs.put(tenant_id, key, payload.json_bytes(document))
        error = f"{len(failures)} task(s) failed" if failures else None
        consumption = lifecycle.Consumption(compute_ms=compute_ms, stored_bytes=written)
        ended = lifecycle.end_job(
            session,
            job,
            outcome,
            source="finalize",
            error=error,
            result_key=key,
            consumption=consumption,
        )
        if ended is None:
            return None
        (publisher or default_publisher()).after_commit(session, ended)
    return outcome
