"""Live updates of the console's job pages, driven by the job event stream (issue 17).

The REST stream (``GET /v1/jobs/{id}/events``) authenticates with an API key in a header,
which a browser's ``EventSource`` cannot send; the console's stream
(``GET /console/jobs/live-events``) authenticates with the session cookie and reads the
same events through the same :func:`events.job_watch` registry (one Redis pub/sub
connection and one poll per API process; in the embedded mode, without Redis, the
registry polls the database every half second), scoped by the session's tenant: a
watch key is ``(tenant, job)``, so another tenant's job id watches nothing.

A page does not render events; it re-reads its own fragment when told to. So the stream
sends one ``changed`` event whenever any watched job moved past the cursor that the page
was rendered at, at most one per ``console.poll_seconds`` (a 1,000-task job ends 1,000
tasks; the page is re-read at most every interval, and the last change is never dropped,
only delayed). Then ``end`` once every watched job has ended, which closes the browser's
``EventSource`` (htmx's ``sse-close``) instead of letting it reconnect. The session is
checked again every second: a revoked key or a suspended tenant ends the stream with a
last ``changed``, whose re-read is redirected to the sign-in page.

Polling is the fallback: when the stream fails (a proxy that buffers, no connection), the
page's script polls the same fragment (``static/console.js``).
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass

from fastapi.concurrency import run_in_threadpool
from fastapi.sse import ServerSentEvent

from celeriac.platform.auth.context import TenantContext
from celeriac.platform.errors import ProblemError, ValidationFailed
from celeriac.platform.jobs import events
from celeriac.platform.jobs.schemas import JobOut
from celeriac.platform.models import FINAL_JOB_STATES, JobState

# A list page watches at most its own rows; a detail page one job.
MAX_WATCHED = 50
SESSION_CHECK_SECONDS = 1.0
_STAGE_KEYS = tuple(stage.value for stage in events.STAGES)


@dataclass(frozen=True)
class WatchSpec:
    """What a page watches: the jobs and the cursor each was rendered at. ``progress``:
    task ends count as changes (the job page); else only state changes (the list)."""

    jobs: tuple[tuple[uuid.UUID, events.Cursor], ...]
    progress: bool

    def encode(self, cursors: Sequence[events.Cursor]) -> str:
        """The SSE event id: every job's cursor, in order (the browser sends it back as
        ``Last-Event-ID`` when it reconnects by itself)."""
        return "~".join(str(c) for c in cursors)

    def resume(self, last_event_id: str | None) -> list[events.Cursor]:
        """The cursors to start from: a reconnecting browser's ``Last-Event-ID`` when it
        is one of this stream's ids, else those the page was rendered at."""
        start = [cursor for _, cursor in self.jobs]
        if not last_event_id:
            return start
        parts = last_event_id.split("~")
        if len(parts) != len(start):
            return start
        try:
            return [events.Cursor.parse(part) for part in parts]
        except ProblemError:
            return start


def cursor_of(job: JobOut) -> events.Cursor:
    """The event cursor that a page rendered from ``job`` stands at: the same definition
    as :func:`events.events_between` (rank 2 once final, 1 once started; tasks ended per
    stage), so that a stream opened later sends only what the page does not show."""
    if job.state in FINAL_JOB_STATES:
        rank = 2
    elif job.started_at is not None or job.state is JobState.RUNNING:
        rank = 1
    else:
        rank = 0
    done = [0, 0, 0]
    for index, stage in enumerate(_STAGE_KEYS):
        p = (job.progress or {}).get(stage)
        if p is not None:
            done[index] = p.succeeded + p.failed + p.timed_out + p.cancelled
    return events.Cursor(rank, (done[0], done[1], done[2]))


def watch_param(jobs: Sequence[JobOut]) -> list[str]:
    """``w`` query values for the jobs of a page that have not ended."""
    return [f"{job.id}_{cursor_of(job)}" for job in jobs if job.state not in FINAL_JOB_STATES]


def parse_watch(values: Sequence[str], progress: bool) -> WatchSpec:
    """The ``w`` values of a stream request (400 when malformed)."""
    if not values or len(values) > MAX_WATCHED:
        raise ValidationFailed(f"watch between 1 and {MAX_WATCHED} jobs")
    jobs = []
    for value in values:
        job_id, _, cursor = value.partition("_")
        try:
            jobs.append((uuid.UUID(job_id), events.Cursor.parse(cursor)))
        except (ValueError, ProblemError):
            raise ValidationFailed(f"{value[:80]!r} is not a job id and cursor") from None
    return WatchSpec(tuple(jobs), progress)


def _moved(before: events.Cursor, after: events.Cursor, progress: bool) -> bool:
    return after.rank > before.rank or (progress and after.done != before.done)


async def stream(
    ctx: TenantContext,
    spec: WatchSpec,
    cursors: list[events.Cursor],
    *,
    interval: float,
    signed_in: Callable[[], bool],
) -> AsyncIterator[ServerSentEvent]:
    """``changed`` (data: the jobs that moved) whenever a watched job moves past its
    cursor, at most one per ``interval``; ``end`` once all have ended or the session
    ended (after one more ``changed``, so that the page re-reads and is redirected)."""
    watch = events.job_watch()
    loop = asyncio.get_running_loop()
    # Counted from the stream's start, so that a page which re-reads and reconnects after
    # every push is still re-read at most once an interval for task ends; a state change
    # (at most three per job) is sent at once.
    last_sent = loop.time()
    urgent = False
    async with contextlib.AsyncExitStack() as stack:
        watchers = [
            await stack.enter_async_context(watch.watch(ctx.tenant_id, job_id))
            for job_id, _ in spec.jobs
        ]
        next_check = loop.time() + SESSION_CHECK_SECONDS
        pending: set[int] = set()
        while True:
            for index, watcher in enumerate(watchers):
                if not watcher.changed.is_set():
                    continue
                watcher.changed.clear()
                snapshot = watcher.snapshot
                if snapshot is None:  # no such job for this tenant, or deleted meanwhile:
                    cursors[index] = events.Cursor(2, cursors[index].done)  # nothing to say
                    continue
                after, _ = events.events_between(cursors[index], snapshot)
                if _moved(cursors[index], after, spec.progress):
                    pending.add(index)
                    urgent = urgent or after.rank > cursors[index].rank
                cursors[index] = after
            ended = all(c.rank == 2 for c in cursors)
            now = loop.time()
            if pending and (urgent or now - last_sent >= interval):
                moved = [str(spec.jobs[i][0]) for i in sorted(pending)]
                yield ServerSentEvent(event="changed", data=moved, id=spec.encode(cursors))
                pending.clear()
                urgent = False
                last_sent = now
            if ended:
                yield ServerSentEvent(event="end", data="ended")
                return
            if now >= next_check:
                next_check = now + SESSION_CHECK_SECONDS
                if not await run_in_threadpool(signed_in):
                    yield ServerSentEvent(event="changed", data=[], id=spec.encode(cursors))
                    yield ServerSentEvent(event="end", data="signed out")
                    return
            wake = min(next_check, last_sent + interval) if pending else next_check
            await _wait_any([w.changed for w in watchers], max(0.0, wake - loop.time()))


async def _wait_any(flags: Sequence[asyncio.Event], seconds: float) -> None:
    """Until one of ``flags`` is set, or ``seconds`` have passed."""
    if any(flag.is_set() for flag in flags):
        return
    waits = [asyncio.ensure_future(flag.wait()) for flag in flags]
    try:
        await asyncio.wait(waits, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiting in waits:
            waiting.cancel()
