"""Engines and sessions. Transactions belong to the edges (request, task, CLI command)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker

from celeriac.platform.settings import get_settings

logger = logging.getLogger(__name__)


def create_db_engine(url: str, **kwargs: Any) -> Engine:
    """An engine for ``url``; SQLite gets WAL, foreign keys and a busy timeout.

    SQLite is the embedded mode's database, shared by the API, three worker pools and
    beat as separate processes: WAL lets readers run beside the one writer, and the busy
    timeout turns writer contention into a short wait instead of "database is locked".
    """
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30}, **kwargs)

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

        return engine
    # A pool as large as the API's thread pool can keep busy (overflow connections are
    # closed on return, so a small pool reconnects under load); stale connections are
    # recycled by age instead of a pre-ping round trip on every checkout.
    options: dict[str, Any] = {"pool_size": 20, "max_overflow": 20, "pool_recycle": 1800}
    return create_engine(url, **(options | kwargs))


def upsert_insert(
    bind: Session | Connection, model: type[DeclarativeBase]
) -> postgresql.Insert | sqlite.Insert:
    """An INSERT into ``model``'s table in the dialect of ``bind``'s database, which is the one
    that has ``on_conflict_do_nothing`` / ``on_conflict_do_update`` (SQLAlchemy's generic
    insert has neither; PostgreSQL's and SQLite's spell them the same)."""
    dialect = bind.dialect if isinstance(bind, Connection) else bind.get_bind().dialect
    if dialect.name == "postgresql":
        return postgresql.insert(model)
    return sqlite.insert(model)


@lru_cache(maxsize=1)
def get_engine() -> Engine:
    """The process-wide engine for the configured database."""
    return create_db_engine(get_settings().database_url)


@lru_cache(maxsize=1)
def get_sessionmaker() -> sessionmaker[Session]:
    return sessionmaker(bind=get_engine(), expire_on_commit=False)


@contextmanager
def transaction() -> Iterator[Session]:
    """A session whose work commits when the block ends, or rolls back on error."""
    with get_sessionmaker().begin() as session:
        yield session


_AFTER_COMMIT = "celeriac_after_commit"


def run_after_commit(session: Session, callback: Callable[[], None]) -> None:
    """Call ``callback`` once ``session``'s transaction has committed (and never if it rolls
    back): tasks are published only for rows that exist."""
    session.info.setdefault(_AFTER_COMMIT, []).append(callback)


@event.listens_for(Session, "after_commit")
def _run_after_commit_callbacks(session: Session) -> None:
    for callback in session.info.pop(_AFTER_COMMIT, []):
        try:
            callback()
        except Exception:
            # The commit stands; the reconciler re-dispatches work whose publish failed.
            logger.exception("after-commit callback failed")


@event.listens_for(Session, "after_soft_rollback")
def _drop_after_commit_callbacks(session: Session, _previous: Any) -> None:
    session.info.pop(_AFTER_COMMIT, None)
