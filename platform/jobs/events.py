"""A job's live events (``GET /v1/jobs/{id}/events``): derived from the database, nudged
through Redis.

The events are a pure function of the job's rows: ``queued``, ``running`` (once it
started), one ``progress`` event per task that ends in a stage (``done`` counts up by one;
``total`` and ``failed`` are as read), then the final state. An event's id is the cursor
of everything sent up to it, ``"<state rank>.<datasets done>.<analysis done>.<finalize
done>"``: a resumed stream (``Last-Event-ID``) sends exactly what lies beyond it, and two
API processes send the same ids, so nothing is lost or repeated wherever a client
reconnects. The rank is 2 for the final state only (clients rely on it: a stream resumed
after the final event ends at once, empty, and the SDK does not reconnect past it).

Workers (and the API, when it cancels) call :func:`announce` at each transition: a
PUBLISH of the job id on the cache Redis, which only tells the streams of that job to read
its rows again. A nudge lost by pub/sub costs latency, never an event: every stream also
reads the rows every ``api.events_poll_seconds``, and in the embedded mode (no Redis) that
poll is all there is.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import threading
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import redis
import redis.asyncio
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from celeriac.platform.errors import BadRequest
from celeriac.platform.models import FINAL_JOB_STATES, Job, JobStage, JobState, JobTask, TaskState
from celeriac.platform.redis_client import get_redis
from celeriac.platform.settings import get_settings

logger = logging.getLogger(__name__)

CHANNEL_PREFIX = "celeriac:job-events:"
STAGES = (JobStage.DATASETS, JobStage.ANALYSIS, JobStage.FINALIZE)
_ENDED_TASK = (TaskState.SUCCEEDED, TaskState.FAILED, TaskState.TIMED_OUT, TaskState.CANCELLED)
_FAILED_TASK = (TaskState.FAILED, TaskState.TIMED_OUT)
_CURSOR = re.compile(r"^(-1|[0-2])\.(\d{1,9})\.(\d{1,9})\.(\d{1,9})$")


def channel(job_id: uuid.UUID | str) -> str:
    return f"{CHANNEL_PREFIX}{job_id}"


def announce(job_id: uuid.UUID | str) -> None:
    """Tell the open event streams of a job that it changed (call after the commit).
    Never raises: a lost nudge is made up by the streams' own polling."""
    client = get_redis()
    if client is None:
        return
    try:
        client.publish(channel(job_id), b"1")
    except redis.RedisError:
        logger.warning("announcing a change of job %s failed", job_id, exc_info=True)


# -- the events a job's rows give ---------------------------------------------------------


@dataclass(frozen=True)
class StageCount:
    done: int = 0
    total: int = 0
    failed: int = 0


@dataclass(frozen=True)
class Snapshot:
    state: JobState
    started: bool
    stages: dict[JobStage, StageCount] = field(default_factory=dict)

    @property
    def rank(self) -> int:
        if self.state in FINAL_JOB_STATES:
            return 2
        return 1 if self.started or self.state is JobState.RUNNING else 0


@dataclass(frozen=True)
class Cursor:
    """What a client has been sent: the state rank (-1: nothing) and tasks done per stage."""

    rank: int = -1
    done: tuple[int, int, int] = (0, 0, 0)

    def __str__(self) -> str:
        return f"{self.rank}.{self.done[0]}.{self.done[1]}.{self.done[2]}"

    @classmethod
    def parse(cls, value: str | None) -> Cursor:
        """The cursor of a ``Last-Event-ID`` header (400 when it is not one of ours)."""
        if value is None or value == "":
            return cls()
        match = _CURSOR.match(value.strip())
        if match is None:
            raise BadRequest(
                f"Last-Event-ID {value[:80]!r} is not an event id of this stream; reconnect "
                "without it to receive the stream from the start",
                extra={"header": "Last-Event-ID"},
            )
        rank, *done = (int(g) for g in match.groups())
        return cls(rank, (done[0], done[1], done[2]))


def read_snapshot(session: Session, tenant_id: uuid.UUID, job_id: uuid.UUID) -> Snapshot | None:
    """The job's state and per-stage task counts (None: no such job for this tenant)."""
    row = session.execute(
        select(Job.state, Job.started_at).where(Job.tenant_id == tenant_id, Job.id == job_id)
    ).one_or_none()
    if row is None:
        return None
    counts = session.execute(
        select(JobTask.stage, JobTask.state, func.count())
        .where(JobTask.tenant_id == tenant_id, JobTask.job_id == job_id)
        .group_by(JobTask.stage, JobTask.state)
    ).all()
    tally: dict[JobStage, list[int]] = {}
    for stage, task_state, count in counts:
        entry = tally.setdefault(stage, [0, 0, 0])
        entry[1] += count
        if task_state in _ENDED_TASK:
            entry[0] += count
        if task_state in _FAILED_TASK:
            entry[2] += count
    stages = {s: StageCount(*v) for s, v in tally.items()}
    return Snapshot(state=row.state, started=row.started_at is not None, stages=stages)


def events_between(cursor: Cursor, snapshot: Snapshot) -> tuple[Cursor, list[dict[str, Any]]]:
    """The events that take a client from ``cursor`` to ``snapshot``, and the new cursor."""
    out: list[dict[str, Any]] = []
    rank, done = cursor.rank, list(cursor.done)

    def event(kind: str, state: JobState, **fields: Any) -> None:
        final = kind == "state" and state in FINAL_JOB_STATES
        out.append({"id": str(Cursor(rank, (done[0], done[1], done[2]))), "type": kind,
                    "state": state.value, "final": final, **fields})  # fmt: skip

    if rank < 0:
        rank = 0
        event("state", JobState.QUEUED)
    if rank < 1 and snapshot.rank >= 1 and snapshot.started:
        rank = 1
        event("state", JobState.RUNNING)
    current = JobState.RUNNING if rank == 1 else JobState.QUEUED
    for index, stage in enumerate(STAGES):
        count = snapshot.stages.get(stage)
        if count is None:
            continue
        while done[index] < count.done:
            done[index] += 1
            event("progress", current, stage=stage.value, done=done[index],
                  total=count.total, failed=min(count.failed, done[index]))  # fmt: skip
    if rank < 2 and snapshot.rank == 2:
        rank = 2
        event("state", snapshot.state)
    return Cursor(rank, (done[0], done[1], done[2])), out


# -- waking the streams of one API process -------------------------------------------------


class JobChanges:
    """One Redis pub/sub connection per API process, shared by all its event streams:
    200 streams are 200 entries in a dict, not 200 connections. A stream waits on an
    ``asyncio.Event`` that a message for its job sets."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._waiters: dict[str, set[asyncio.Event]] = {}
        self._pubsub: redis.asyncio.client.PubSub | None = None
        self._reader: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    @contextlib.asynccontextmanager
    async def watch(self, job_id: uuid.UUID) -> AsyncIterator[asyncio.Event]:
        """An event set whenever the job is announced, while the block runs."""
        name = channel(job_id)
        woken = asyncio.Event()
        async with self._lock:
            first = name not in self._waiters
            self._waiters.setdefault(name, set()).add(woken)
            if first:
                with contextlib.suppress(redis.RedisError, OSError):
                    await (await self._connected()).subscribe(name)
        try:
            yield woken
        finally:
            async with self._lock:
                waiters = self._waiters.get(name, set())
                waiters.discard(woken)
                if not waiters:
                    self._waiters.pop(name, None)
                    if self._pubsub is not None:
                        with contextlib.suppress(redis.RedisError, OSError):
                            await self._pubsub.unsubscribe(name)

    def watched(self) -> int:
        """Jobs with at least one open stream in this process."""
        return len(self._waiters)

    async def _connected(self) -> redis.asyncio.client.PubSub:
        if self._pubsub is None:
            client = redis.asyncio.Redis.from_url(self.url, socket_connect_timeout=2)
            self._pubsub = client.pubsub(ignore_subscribe_messages=True)
        if self._reader is None or self._reader.done():
            self._reader = asyncio.create_task(self._read())
        return self._pubsub

    async def _read(self) -> None:
        while True:
            pubsub = self._pubsub
            if pubsub is None:
                return
            try:
                if not pubsub.subscribed:
                    await asyncio.sleep(0.2)
                    continue
                message = await pubsub.get_message(timeout=1.0)
            except (redis.RedisError, OSError):
                # Streams keep polling the database meanwhile; resubscribe when back.
                await asyncio.sleep(1.0)
                with contextlib.suppress(redis.RedisError, OSError):
                    async with self._lock:
                        if self._waiters:
                            await pubsub.subscribe(*self._waiters)
                continue
            if message is None:
                continue
            name = message.get("channel")
            name = name.decode() if isinstance(name, bytes) else str(name)
            for woken in list(self._waiters.get(name, ())):
                woken.set()

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader
        if self._pubsub is not None:
            with contextlib.suppress(Exception):
                await self._pubsub.aclose()  # type: ignore[no-untyped-call]
        self._pubsub = None


_changes: dict[int, JobChanges] = {}
_changes_lock = threading.Lock()


def job_changes() -> JobChanges | None:
    """This event loop's listener, or None in the embedded mode (no Redis)."""
    url = get_settings().redis_url
    if url is None:
        return None
    loop = id(asyncio.get_running_loop())
    with _changes_lock:
        if loop not in _changes:
            _changes[loop] = JobChanges(str(url))
        return _changes[loop]


def poll_seconds() -> float:
    settings = get_settings()
    return settings.api.events_poll_seconds if settings.redis_url else 0.5
