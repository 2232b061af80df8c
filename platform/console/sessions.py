"""Server-side console sessions: an opaque id in a cookie, the state on the server.

Signing in exchanges an API key or an admin/billing JWT for a session. The cookie carries
only 32 random bytes; the store (Redis when configured, else the database) keys the state by
their SHA-256, so a read of the store yields no usable cookie. A tenant session keeps the
key's HMAC digest, never the key: each request re-checks it through the API's own
authenticator (``ApiKeyAuthenticator.authenticate_digest``), whose cache is dropped when the
shared auth generation moves, so revoking the key or suspending the tenant ends the session
within the API's revocation bound (``api.auth_cache_poll_seconds``, at most 5 s).

A session ends at the first of: sign-out, ``console.idle_timeout_seconds`` without a request,
``console.absolute_timeout_seconds`` after sign-in, and (admin) the token's own ``exp``.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any, Literal, Protocol

import redis
from sqlalchemy import delete, select

from celeriac.platform.db import get_sessionmaker
from celeriac.platform.models import ConsoleSession
from celeriac.platform.redis_client import get_redis
from celeriac.platform.settings import get_settings

REDIS_PREFIX = "celeriac:console:session:"
# The idle deadline is written back at most this often per session (not on every page).
TOUCH_EVERY_SECONDS = 15.0

Kind = Literal["tenant", "admin"]


@dataclass
class SessionState:
    """What the server keeps for one signed-in browser."""

    kind: Kind
    csrf: str
    created_at: float
    absolute_until: float
    idle_until: float
    # tenant sessions
    key_digest: str = ""
    key_id: str = ""
    tenant_id: str = ""
    tenant_slug: str = ""
    # admin / billing sessions
    subject: str = ""
    role: str = ""

    @property
    def expires_at(self) -> float:
        return min(self.absolute_until, self.idle_until)


class SessionStore(Protocol):
    def load(self, id_hash: str) -> dict[str, Any] | None: ...

    def save(self, id_hash: str, data: dict[str, Any], expires_at: float) -> None: ...

    def delete(self, id_hash: str) -> None: ...


class RedisSessionStore:
    """Sessions as Redis strings that expire with the session."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client

    def load(self, id_hash: str) -> dict[str, Any] | None:
        raw = self.client.get(REDIS_PREFIX + id_hash)
        return None if raw is None else dict(json.loads(raw))

    def save(self, id_hash: str, data: dict[str, Any], expires_at: float) -> None:
        ttl_ms = max(1, int((expires_at - time.time()) * 1000))
        self.client.set(REDIS_PREFIX + id_hash, json.dumps(data), px=ttl_ms)

    def delete(self, id_hash: str) -> None:
        self.client.delete(REDIS_PREFIX + id_hash)


class DatabaseSessionStore:
    """The embedded mode's store (no Redis): one row per session; dead rows are deleted
    whenever a session is created."""

    def load(self, id_hash: str) -> dict[str, Any] | None:
        with get_sessionmaker()() as db:
            row = db.get(ConsoleSession, id_hash)
            if row is None or row.expires_at.timestamp() <= time.time():
                return None
            return dict(row.data)

    def save(self, id_hash: str, data: dict[str, Any], expires_at: float) -> None:
        with get_sessionmaker()() as db, db.begin():
            row = db.get(ConsoleSession, id_hash)
            deadline = datetime.fromtimestamp(expires_at, UTC)
            if row is None:
                db.execute(
                    delete(ConsoleSession).where(ConsoleSession.expires_at < datetime.now(UTC))
                )
                db.add(ConsoleSession(id_hash=id_hash, data=data, expires_at=deadline))
            else:
                row.data, row.expires_at = data, deadline

    def delete(self, id_hash: str) -> None:
        with get_sessionmaker()() as db, db.begin():
            db.execute(delete(ConsoleSession).where(ConsoleSession.id_hash == id_hash))

    def count(self) -> int:
        with get_sessionmaker()() as db:
            return len(db.scalars(select(ConsoleSession.id_hash)).all())


@lru_cache(maxsize=1)
def session_store() -> SessionStore:
    client = get_redis()
    return RedisSessionStore(client) if client is not None else DatabaseSessionStore()


def _hash(session_id: str) -> str:
    return hashlib.sha256(session_id.encode()).hexdigest()


def start(
    state_fields: dict[str, Any], *, not_after: float | None = None
) -> tuple[str, SessionState]:
    """Create a session (``not_after``: an earlier absolute end, e.g. a token's ``exp``);
    returns the cookie value and the state."""
    settings = get_settings().console
    now = time.time()
    absolute = now + settings.absolute_timeout_seconds
    if not_after is not None:
        absolute = min(absolute, not_after)
    state = SessionState(
        csrf=secrets.token_urlsafe(32),
        created_at=now,
        absolute_until=absolute,
        idle_until=now + settings.idle_timeout_seconds,
        **state_fields,
    )
    session_id = secrets.token_urlsafe(32)
    session_store().save(_hash(session_id), asdict(state), state.expires_at)
    return session_id, state


def resolve(session_id: str | None) -> SessionState | None:
    """The live session a cookie names (its idle deadline moved on), or None."""
    if not session_id or len(session_id) > 100:
        return None
    id_hash = _hash(session_id)
    store = session_store()
    data = store.load(id_hash)
    if data is None:
        return None
    state = SessionState(**data)
    now = time.time()
    if now >= state.expires_at:
        store.delete(id_hash)
        return None
    idle = get_settings().console.idle_timeout_seconds
    if now + idle - state.idle_until >= TOUCH_EVERY_SECONDS:
        state.idle_until = now + idle
        store.save(id_hash, asdict(state), state.expires_at)
    return state


def end(session_id: str | None) -> None:
    """Sign out: the session is deleted from the store (the cookie is then worthless)."""
    if session_id:
        session_store().delete(_hash(session_id))
