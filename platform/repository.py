"""Tenant-scoped data access: every query of a tenant-owned table starts here.

A repository is built from a scope carrying the tenant id (the request's
:class:`~celeriac.platform.auth.context.TenantContext`, or an admin's chosen tenant), and
its ``select()`` already filters on it, so an unscoped query has to be written on purpose.
Another tenant's row is simply not found: a 404, never a 403.
"""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any, ClassVar, Generic, Protocol, TypeVar

from sqlalchemy import ColumnElement, Select, and_, or_, select
from sqlalchemy.orm import InstrumentedAttribute, Session

from celeriac.platform.errors import BadRequest, NotFound


class HasTenant(Protocol):
    @property
    def tenant_id(self) -> uuid.UUID: ...


class TenantOwned(Protocol):
    id: Any
    tenant_id: Any
    created_at: Any


M = TypeVar("M", bound=TenantOwned)


def encode_cursor(created_at: datetime, row_id: object) -> str:
    raw = json.dumps([created_at.isoformat(), str(row_id)]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        created, row_id = json.loads(base64.urlsafe_b64decode(padded))
        return datetime.fromisoformat(created), str(row_id)
    except (ValueError, TypeError, binascii.Error):
        raise BadRequest("the cursor is not one this API returned") from None


def keyset_after(
    created_col: InstrumentedAttribute[Any], id_col: InstrumentedAttribute[Any], cursor: str
) -> ColumnElement[bool]:
    """Rows after ``cursor`` in (created_at desc, id desc) order."""
    created, row_id = decode_cursor(cursor)
    key: object = row_id
    if isinstance(id_col.type.python_type, type) and id_col.type.python_type is uuid.UUID:
        try:
            key = uuid.UUID(row_id)
        except ValueError:
            raise BadRequest("the cursor is not one this API returned") from None
    return or_(created_col < created, and_(created_col == created, id_col < key))


class TenantRepository(Generic[M]):
    """Queries of one tenant-owned model, always filtered on the scope's tenant."""

    model: ClassVar[type[Any]]
    not_found: ClassVar[str] = "object"

    def __init__(self, session: Session, scope: HasTenant) -> None:
        self.session = session
        self.tenant_id = scope.tenant_id

    def select(self) -> Select[M]:
        return select(self.model).where(self.model.tenant_id == self.tenant_id)

    def get(self, object_id: uuid.UUID | str, *, for_update: bool = False) -> M:
        query = self.select().where(self.model.id == object_id)
        if for_update:
            query = query.with_for_update()
        found: M | None = self.session.scalars(query).one_or_none()
        if found is None:
            raise NotFound(f"no {self.not_found} with id {object_id}")
        return found

    def page(
        self, *filters: ColumnElement[bool], cursor: str | None, limit: int
    ) -> tuple[Sequence[M], str | None]:
        """One page, newest first, and the cursor of the next page (None at the end)."""
        return keyset_page(self.session, self.select().where(*filters), self.model, cursor, limit)


R = TypeVar("R")


def keyset_page(
    session: Session, query: Select[R], model: type[Any], cursor: str | None, limit: int
) -> tuple[Sequence[R], str | None]:
    """Keyset pagination in (created_at desc, id desc) order: stable under inserts."""
    if cursor:
        query = query.where(keyset_after(model.created_at, model.id, cursor))
    query = query.order_by(model.created_at.desc(), model.id.desc()).limit(limit + 1)
    rows = list(session.scalars(query))
    if len(rows) <= limit:
        return rows, None
    last: Any = rows[limit - 1]
    return rows[:limit], encode_cursor(last.created_at, last.id)
