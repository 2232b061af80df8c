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
its rows again. A nudge lost by pub/sub costs latency, never an event: each API process
also reads all its watched jobs every ``api.events_poll_seconds`` (:class:`JobWatch`), and
in the embedded mode (no Redis) that poll is all there is.
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
from fastapi.concurrency import run_in_threadpool
from sqlalchemy.orm import Session

from celeriac.platform.db import get_sessionmaker, run_after_commit
from celeriac.platform.errors import BadRequest
from celeriac.platform.jobs import repository
from celeriac.platform.models import FINAL_JOB_STATES, JobStage, JobState, TaskState
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


def announce_after_commit(session: Session | None, job_id: uuid.UUID | str) -> None:
    """:func:`announce` once ``session`` commits (at once without a session): the hook of
    job transitions and task ends, so that streams read rows that exist."""
    if session is None:
        announce(job_id)
        return
    run_after_commit(session, lambda: announce(job_id))


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
    return read_snapshots(session, [(tenant_id, job_id)]).get((tenant_id, job_id))


def events_between(cursor: Cursor, snapshot: Snapshot) -> tuple[Cursor, list[dict[str, Any]]]:
    """The events that take a client from ``cursor`` to ``snapshot``, and the new cursor."""
    out: list[dict[str, Any]] = []
    rank, done = cursor.rank, list(cursor.done)

    def event(kind: str, state: JobState, **fields: Any) -> None:
        final = kind == "state" and state in FINAL_JOB_STATES
        out.append(
            {
                "id": str(Cursor(rank, (done[0], done[1], done[2]))),
                "type": kind,
                "state": state.value,
                "final": final,
                **fields,
            }
        )

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
            event(
                "progress",
                current,
                stage=stage.value,
                done=done[index],
                total=count.total,
                failed=min(count.failed, done[index]),
            )
    if rank < 2 and snapshot.rank == 2:
        rank = 2
        event("state", snapshot.state)
    return Cursor(rank, (done[0], done[1], done[2])), out


# -- the streams of one API process ---------------------------------------------------------


def read_snapshots(
    session: Session, keys: list[tuple[uuid.UUID, uuid.UUID]]
) -> dict[tuple[uuid.UUID, uuid.UUID], Snapshot]:
    """The snapshots of many (tenant, job) pairs in two queries (absent: no such job)."""
    if not keys:
        return {}
    tallies: dict[tuple[uuid.UUID, uuid.UUID], dict[JobStage, list[int]]] = {}
    for tenant_id, job_id, stage, task_state, count in repository.task_state_counts(session, keys):
        entry = tallies.setdefault((tenant_id, job_id), {}).setdefault(stage, [0, 0, 0])
        entry[1] += count
        if task_state in _ENDED_TASK:
            entry[0] += count
        if task_state in _FAILED_TASK:
            entry[2] += count
    return {
        (row.tenant_id, row.id): Snapshot(
            state=row.state,
            started=row.started_at is not None,
            stages={s: StageCount(*v) for s, v in tallies.get((row.tenant_id, row.id), {}).items()},
        )
        for row in repository.job_states(session, keys)
    }


def _read(keys: list[tuple[uuid.UUID, uuid.UUID]]) -> dict[tuple[uuid.UUID, uuid.UUID], Snapshot]:
    with get_sessionmaker()() as session:
        return read_snapshots(session, keys)


@dataclass
class _Watched:
    waiters: set[asyncio.Event] = field(default_factory=set)
    snapshot: Snapshot | None = None
    refreshing: bool = False
    dirty: bool = False


class Watcher:
    """One stream's view of its job: ``changed`` is set when ``snapshot`` has moved on."""

    def __init__(self, watch: JobWatch, key: tuple[uuid.UUID, uuid.UUID]) -> None:
        self.watch = watch
        self.key = key
        self.changed = asyncio.Event()

    @property
    def snapshot(self) -> Snapshot | None:
        """The job as last read (None once it is gone)."""
        entry = self.watch.watched.get(self.key)
        return entry.snapshot if entry is not None else None


class JobWatch:
    """The open event streams of one API process (one event loop), and what keeps them
    current at a cost that does not grow with their number: one poll of every watched job
    each ``poll`` seconds (two queries), and one Redis pub/sub connection whose nudge makes
    one read of that job, shared by all its streams. 200 streams are 200 entries here, not
    200 connections or 200 queries a second."""

    def __init__(self, redis_url: str | None, poll: float) -> None:
        self.redis_url = redis_url
        self.poll = poll
        self.watched: dict[tuple[uuid.UUID, uuid.UUID], _Watched] = {}
        self._pubsub: redis.asyncio.client.PubSub | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._poller: asyncio.Task[None] | None = None
        self._reader: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    @contextlib.asynccontextmanager
    async def watch(self, tenant_id: uuid.UUID, job_id: uuid.UUID) -> AsyncIterator[Watcher]:
        """Follow a job while the block runs; the snapshot is read once the job's channel is
        subscribed, so that no change falls between the two."""
        key = (tenant_id, job_id)
        watcher = Watcher(self, key)
        async with self._lock:
            entry = self.watched.get(key)
            if entry is None:
                entry = self.watched[key] = _Watched()
                await self._subscribe(job_id)
            entry.waiters.add(watcher.changed)
            self._start_poller()
        try:
            await self._refresh(key)
            watcher.changed.set()
            yield watcher
        finally:
            async with self._lock:
                entry.waiters.discard(watcher.changed)
                if not entry.waiters:
                    self.watched.pop(key, None)
                    if self._pubsub is not None:
                        with contextlib.suppress(redis.RedisError, OSError):
                            await self._pubsub.unsubscribe(channel(job_id))

    def watched_jobs(self) -> int:
        """Jobs with at least one open stream in this process."""
        return len(self.watched)

    def _publish(self, key: tuple[uuid.UUID, uuid.UUID], snapshot: Snapshot | None) -> None:
        entry = self.watched.get(key)
        if entry is None or (snapshot == entry.snapshot and snapshot is not None):
            return
        entry.snapshot = snapshot
        for woken in entry.waiters:
            woken.set()

    async def _refresh(self, key: tuple[uuid.UUID, uuid.UUID]) -> None:
        """Read one job now (coalesced: a nudge during a read makes one more read)."""
        entry = self.watched.get(key)
        if entry is None:
            return
        if entry.refreshing:
            entry.dirty = True
            return
        entry.refreshing = True
        try:
            while True:
                entry.dirty = False
                found = await run_in_threadpool(_read, [key])
                self._publish(key, found.get(key))
                if not entry.dirty:
                    break
        finally:
            entry.refreshing = False

    def _start_poller(self) -> None:
        if self._poller is None or self._poller.done():
            self._poller = asyncio.create_task(self._poll())

    async def _poll(self) -> None:
        while self.watched:
            await asyncio.sleep(self.poll)
            keys = list(self.watched)
            try:
                found: dict[tuple[uuid.UUID, uuid.UUID], Snapshot] = {}
                for start in range(0, len(keys), 500):
                    found.update(await run_in_threadpool(_read, keys[start : start + 500]))
            except Exception:
                logger.warning("polling %d watched jobs failed", len(keys), exc_info=True)
                continue
            for key in keys:
                self._publish(key, found.get(key))

    async def _subscribe(self, job_id: uuid.UUID) -> None:
        if self.redis_url is None:
            return
        try:
            if self._pubsub is None:
                client = redis.asyncio.Redis.from_url(self.redis_url, socket_connect_timeout=2)
                self._pubsub = client.pubsub(ignore_subscribe_messages=True)
            await self._pubsub.subscribe(channel(job_id))
        except (redis.RedisError, OSError):
            logger.warning("subscribing to job %s's changes failed (polling)", job_id)
            return
        if self._reader is None or self._reader.done():
            self._reader = asyncio.create_task(self._read_nudges())

    async def _read_nudges(self) -> None:
        while self._pubsub is not None and self.watched:
            pubsub = self._pubsub
            try:
                if not pubsub.subscribed:
                    await asyncio.sleep(0.2)
                    continue
                message = await pubsub.get_message(timeout=1.0)
            except (redis.RedisError, OSError):
                # The streams keep being polled meanwhile; subscribe again when back.
                await asyncio.sleep(1.0)
                with contextlib.suppress(redis.RedisError, OSError):
                    async with self._lock:
                        names = [channel(job_id) for _, job_id in self.watched]
                        if names:
                            await pubsub.subscribe(*names)
                continue
            if message is None:
                continue
            name = message.get("channel")
            name = name.decode() if isinstance(name, bytes) else str(name)
            job_id = uuid.UUID(name.removeprefix(CHANNEL_PREFIX))
            for key in [k for k in self.watched if k[1] == job_id]:
                task = asyncio.create_task(self._refresh(key))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)


_watches: dict[int, JobWatch] = {}
_watches_lock = threading.Lock()


def job_watch() -> JobWatch:
    """This event loop's (this API process's) stream registry."""
    settings = get_settings()
    loop = id(asyncio.get_running_loop())
    with _watches_lock:
        if loop not in _watches:
            url = str(settings.redis_url) if settings.redis_url else None
            poll = settings.api.events_poll_seconds if url else 0.5
            _watches[loop] = JobWatch(url, poll)
        return _watches[loop]
