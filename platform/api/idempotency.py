"""``Idempotency-Key`` on every POST (the IETF httpapi draft's semantics).

The key is reserved when the caller is authenticated (so rejected auth stores nothing):
a new key inserts an ``in_flight`` row in its own transaction, and the unique
(principal, route, key) makes exactly one concurrent request the winner. The answer is
captured by :class:`IdempotencyRecorder` and stored before it is sent, only when it is
2xx; any other outcome (validation, quota, crash) deletes the reservation so the client
can retry. A replay returns the stored answer with ``Idempotent-Replayed: true``.

An API process that dies (SIGKILL, OOM) between the request's commit and storing its answer
leaves the reservation ``in_flight``. After ``api.idempotency_lease_seconds`` a retry treats it
as abandoned: a route that can rebuild its answer from what it committed does so (a job
submission stores its job under the reservation's id, which :func:`reserve` returns), and
otherwise the retry takes the reservation over, keeping its id, and runs again.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta
from typing import Any

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from starlette.datastructures import UploadFile
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from celeriac.platform.db import get_sessionmaker
from celeriac.platform.errors import BadRequest, Conflict, ValidationFailed
from celeriac.platform.models import IdempotencyKey, IdempotencyState, utcnow
from celeriac.platform.settings import get_settings
from celeriac.platform.tenant_data import envelope

HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"
_STATE_KEY = "idempotency_reservation"
# Kept beside the replayed headers: how the body was stored (plain, encrypted, withheld).
_STORED = "x-celeriac-stored"
# Response headers worth replaying; hop-by-hop and per-request ones are left out.
_KEPT_HEADERS = {"content-type", "location", "cache-control"}


# route -> rebuilds the answer of an abandoned reservation from what the request committed
# (status, kept headers, body), or None when it committed nothing.
Recoverer = Callable[[uuid.UUID | None, uuid.UUID], tuple[int, dict[str, str], bytes] | None]
_RECOVERERS: dict[str, Recoverer] = {}


def recover_abandoned(route: str, recoverer: Recoverer) -> None:
    """Register how ``route`` rebuilds the answer of a request whose API process died."""
    _RECOVERERS[route] = recoverer


class IdempotentReplay(Exception):
    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        super().__init__("replay")
        self.status, self.headers, self.body = status, headers, body


async def _request_digest(request: Request) -> str:
    digest = hashlib.sha256(request.method.encode() + b" " + request.url.path.encode())
    try:
        digest.update(await request.body())
    except RuntimeError:  # multipart: FastAPI has already consumed the stream into a form
        form = await request.form()
        for name, value in sorted(form.multi_items(), key=lambda item: item[0]):
            digest.update(name.encode() + b"\0")
            if isinstance(value, UploadFile):
                digest.update(await value.read())
                await value.seek(0)
            else:
                digest.update(value.encode())
    return digest.hexdigest()


async def reserve(
    request: Request, principal: str, tenant_id: uuid.UUID | None
) -> uuid.UUID | None:
    """Reserve the request's Idempotency-Key, or raise the replay / conflict it meets.

    Returns the reservation's id (None without a key), stable across a takeover: a route
    that stores its result under this id lets a retry find it (:func:`recover_abandoned`).
    The id is also left in the request's scope for :class:`IdempotencyRecorder`, which
    stores or deletes the reservation when the answer goes out."""
    key = request.headers.get(HEADER)
    if request.method != "POST" or key is None:
        return None
    if not 1 <= len(key) <= 255 or not key.isprintable():
        raise BadRequest(f"{HEADER} must be 1 to 255 printable characters")
    digest = await _request_digest(request)
    reservation = await run_in_threadpool(
        _reserve, principal, tenant_id, request.url.path, key, digest
    )
    setattr(request.state, _STATE_KEY, reservation)
    return reservation


def _reserve(
    principal: str, tenant_id: uuid.UUID | None, route: str, key: str, digest: str
) -> uuid.UUID:
    ttl = timedelta(seconds=get_settings().api.idempotency_ttl_seconds)
    for _ in range(2):
        now = utcnow()
        row_id = uuid.uuid4()
        try:
            with get_sessionmaker().begin() as session:
                session.add(
                    IdempotencyKey(
                        id=row_id,
                        principal=principal,
                        tenant_id=tenant_id,
                        route=route,
                        key=key,
                        request_digest=digest,
                        created_at=now,
                        expires_at=now + ttl,
                    )
                )
            return row_id
        except IntegrityError:
            pass
        with get_sessionmaker().begin() as session:
            existing = session.scalars(
                select(IdempotencyKey).where(
                    IdempotencyKey.principal == principal,
                    IdempotencyKey.route == route,
                    IdempotencyKey.key == key,
                )
            ).one_or_none()
            if existing is None:
                continue  # deleted meanwhile: try to insert again
            if existing.expires_at <= now:
                session.delete(existing)
                continue
            if existing.request_digest != digest:
                raise ValidationFailed(
                    f"this {HEADER} was used with a different request body; "
                    "use a new key for a new request"
                )
            if existing.state is IdempotencyState.IN_FLIGHT and _abandoned(existing, now):
                outcome = _reclaim(session, existing, now, ttl)
            elif existing.state is IdempotencyState.IN_FLIGHT:
                raise Conflict(
                    f"a request with this {HEADER} is still being processed; retry shortly",
                    headers={"Retry-After": "1"},
                )
            else:
                raise _replay_of(existing)
        # Raised or returned after the block commits (an exception inside rolls it back).
        if isinstance(outcome, Exception):
            raise outcome
        if outcome is not None:
            return outcome
    raise Conflict(f"could not reserve the {HEADER}; retry", headers={"Retry-After": "1"})


def _abandoned(row: IdempotencyKey, now: datetime) -> bool:
    lease = timedelta(seconds=get_settings().api.idempotency_lease_seconds)
    return row.created_at <= now - lease


def _reclaim(
    session: Session, row: IdempotencyKey, now: datetime, ttl: timedelta
) -> Exception | uuid.UUID | None:
    """An abandoned reservation: the replay of the answer its route rebuilt from what the
    dead request committed; else the reservation taken over (its id, to run again); None
    when another retry took it over first (it is in flight again)."""
    recoverer = _RECOVERERS.get(row.route)
    answer = recoverer(row.tenant_id, row.id) if recoverer is not None else None
    if answer is not None:
        _store_answer(row, *answer)
        return _replay_of(row)
    # Compare-and-set on created_at: of two retries, exactly one runs the request again.
    taken = session.execute(
        update(IdempotencyKey)
        .where(
            IdempotencyKey.id == row.id,
            IdempotencyKey.created_at == row.created_at,
            IdempotencyKey.state == IdempotencyState.IN_FLIGHT,
        )
        .values(created_at=now, expires_at=now + ttl)
        .execution_options(synchronize_session=False)
    )
    return row.id if getattr(taken, "rowcount", 0) else None


def _body_context(row_id: uuid.UUID) -> dict[str, str]:
    return {"purpose": "idempotent-response", "idempotency_key_id": str(row_id)}


def _complete(row_id: uuid.UUID, status: int, headers: dict[str, str], body: bytes) -> None:
    """Store the answer. A tenant's answer is encrypted under the tenant's key (it may hold
    a secret shown once, such as a new API key or webhook secret). An admin's answer
    marked ``no-store`` is not kept at all: there is no tenant key to protect it."""
    with get_sessionmaker().begin() as session:
        row = session.get(IdempotencyKey, row_id)
        if row is None:
            return
        _store_answer(row, status, headers, body)


def _store_answer(row: IdempotencyKey, status: int, headers: dict[str, str], body: bytes) -> None:
    stored = dict(headers)
    if row.tenant_id is not None:
        body = envelope().encrypt(str(row.tenant_id), body, _body_context(row.id))
        stored[_STORED] = "encrypted"
    elif "no-store" in headers.get("cache-control", headers.get("Cache-Control", "")):
        body = b""
        stored[_STORED] = "withheld"
    row.state = IdempotencyState.COMPLETED
    row.response_status = status
    row.response_headers = stored
    row.response_body = body


def _replay_of(row: IdempotencyKey) -> Exception:
    headers = dict(row.response_headers or {})
    how = headers.pop(_STORED, "plain")
    body = row.response_body or b""
    if how == "withheld":
        return Conflict(
            "the first answer to this Idempotency-Key held a secret that is shown only once "
            "and is not kept; list the resource to find what the first request created"
        )
    if how == "encrypted" and row.tenant_id is not None:
        body = envelope().decrypt(str(row.tenant_id), body, _body_context(row.id))
    return IdempotentReplay(row.response_status or 200, headers, body)


def _release(row_id: uuid.UUID) -> None:
    with get_sessionmaker().begin() as session:
        session.execute(delete(IdempotencyKey).where(IdempotencyKey.id == row_id))


def _kept(raw: Iterable[tuple[bytes, bytes]]) -> dict[str, str]:
    return {
        k.decode("latin-1"): v.decode("latin-1")
        for k, v in raw
        if k.decode("latin-1").lower() in _KEPT_HEADERS
    }


class IdempotencyRecorder:
    """Stores the answer of a reserved request before sending it (ASGI middleware)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        start: Message | None = None
        chunks: list[bytes] = []

        def reservation() -> uuid.UUID | None:
            state: dict[str, Any] = scope.get("state", {})
            value = state.get(_STATE_KEY)
            return value if isinstance(value, uuid.UUID) else None

        async def capture(message: Message) -> None:
            nonlocal start
            row_id = reservation()
            if row_id is None:
                await send(message)
                return
            if message["type"] == "http.response.start":
                start = message
                return
            chunks.append(message.get("body", b""))
            if message.get("more_body"):
                return
            assert start is not None
            body = b"".join(chunks)
            status = int(start["status"])
            if 200 <= status < 300:
                headers = _kept(start.get("headers", []))
                await run_in_threadpool(_complete, row_id, status, headers, body)
            else:
                await run_in_threadpool(_release, row_id)
            scope["state"].pop(_STATE_KEY, None)
            await send(start)
            await send({"type": "http.response.body", "body": body})

        try:
            await self.app(scope, receive, capture)
        except BaseException:
            row_id = reservation()
            if row_id is not None:
                await run_in_threadpool(_release, row_id)
            raise


def _on_replay(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, IdempotentReplay)
    headers = {**exc.headers, REPLAYED_HEADER: "true"}
    return Response(exc.body, status_code=exc.status, headers=headers)


def install_idempotency(app: FastAPI) -> None:
    app.add_exception_handler(IdempotentReplay, _on_replay)
    app.add_middleware(IdempotencyRecorder)
