"""Billing's reads of usage records (filtered pages, per-period totals) and admins'
adjustments. Reads are across tenants on purpose: only the billing and admin roles call
them, and a tenant filter is an ordinary parameter."""

from __future__ import annotations

import base64
import binascii
import csv
import io
import json
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import ColumnElement, Select, and_, func, or_, select
from sqlalchemy.orm import Session

from celeriac.platform.audit import record_admin_action
from celeriac.platform.errors import BadRequest, NotFound, ValidationFailed
from celeriac.platform.models import UsageRecord
from celeriac.platform.usage.metrics import insert_adjustment
from celeriac.platform.usage.schemas import (
    RECORD_COLUMNS,
    AdjustmentCreate,
    Granularity,
    UsageRecordOut,
    UsageTotal,
)

MAX_SUMMARY_ROWS = 10_000
SCALE = Decimal("0.000001")  # the quantity column's
_SQLITE_PERIOD = {
    Granularity.HOUR: "%Y-%m-%dT%H:00:00",
    Granularity.DAY: "%Y-%m-%dT00:00:00",
    Granularity.MONTH: "%Y-%m-01T00:00:00",
}


def _filters(
    tenant_id: uuid.UUID | None,
    metric: str | None,
    occurred_after: datetime | None,
    occurred_before: datetime | None,
) -> list[ColumnElement[bool]]:
    found: list[ColumnElement[bool]] = []
    if tenant_id is not None:
        found.append(UsageRecord.tenant_id == tenant_id)
    if metric is not None:
        found.append(UsageRecord.metric == metric)
    if occurred_after is not None:
        found.append(UsageRecord.occurred_at >= occurred_after)
    if occurred_before is not None:
        found.append(UsageRecord.occurred_at < occurred_before)
    return found


def _cursor(record: UsageRecord) -> str:
    raw = json.dumps([record.occurred_at.isoformat(), record.id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _after(cursor: str) -> ColumnElement[bool]:
    try:
        occurred, record_id = json.loads(
            base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        )
        at = datetime.fromisoformat(occurred)
    except (ValueError, TypeError, binascii.Error):
        raise BadRequest("the cursor is not one this API returned") from None
    if at.tzinfo is None or not isinstance(record_id, str):
        raise BadRequest("the cursor is not one this API returned")
    return or_(
        UsageRecord.occurred_at > at,
        and_(UsageRecord.occurred_at == at, UsageRecord.id > record_id),
    )


def list_records(
    session: Session,
    *,
    tenant_id: uuid.UUID | None,
    metric: str | None,
    occurred_after: datetime | None,
    occurred_before: datetime | None,
    cursor: str | None,
    limit: int,
) -> tuple[list[UsageRecord], str | None]:
    """One page in (occurred_at, id) order, oldest first: stable while records are added
    (keyset pagination on the index of those two columns)."""
    query = select(UsageRecord).where(*_filters(tenant_id, metric, occurred_after, occurred_before))
    if cursor:
        query = query.where(_after(cursor))
    rows = list(
        session.scalars(query.order_by(UsageRecord.occurred_at, UsageRecord.id).limit(limit + 1))
    )
    if len(rows) <= limit:
        return rows, None
    return rows[:limit], _cursor(rows[limit - 1])


def records_csv(records: Sequence[UsageRecord]) -> str:
    """The records as CSV with a header row: the JSON fields, properties as JSON text."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(RECORD_COLUMNS)
    for record in records:
        values = UsageRecordOut.model_validate(record).model_dump(mode="json")
        values["properties"] = json.dumps(
            values["properties"], sort_keys=True, separators=(",", ":")
        )
        writer.writerow(["" if values[c] is None else values[c] for c in RECORD_COLUMNS])
    return out.getvalue()


def _period(session: Session, granularity: Granularity) -> ColumnElement[Any]:
    if session.get_bind().dialect.name == "postgresql":
        return func.date_trunc(granularity.value, UsageRecord.occurred_at, "UTC")
    return func.strftime(_SQLITE_PERIOD[granularity], UsageRecord.occurred_at)


def summary_query(
    session: Session, granularity: Granularity, filters: list[ColumnElement[bool]]
) -> Select[Any]:
    period = _period(session, granularity).label("period_start")
    return (
        select(
            UsageRecord.tenant_id,
            UsageRecord.metric,
            UsageRecord.unit,
            period,
            func.sum(UsageRecord.quantity),
            func.count(),
        )
        .where(*filters)
        .group_by(UsageRecord.tenant_id, UsageRecord.metric, UsageRecord.unit, period)
        .order_by(period, UsageRecord.tenant_id, UsageRecord.metric)
    )


def summarize(
    session: Session,
    *,
    granularity: Granularity,
    tenant_id: uuid.UUID | None,
    metric: str | None,
    occurred_after: datetime | None,
    occurred_before: datetime | None,
) -> list[UsageTotal]:
    """Totals per tenant, metric and period (UTC), adjustments included."""
    filters = _filters(tenant_id, metric, occurred_after, occurred_before)
    rows = session.execute(
        summary_query(session, granularity, filters).limit(MAX_SUMMARY_ROWS + 1)
    ).all()
    if len(rows) > MAX_SUMMARY_ROWS:
        raise ValidationFailed(
            f"more than {MAX_SUMMARY_ROWS} totals match; narrow the time range, choose a "
            "coarser granularity or filter by tenant or metric"
        )
    return [
        UsageTotal(
            tenant_id=t,
            metric=m,
            unit=u,
            period_start=_as_utc(p),
            quantity=Decimal(q),
            records=int(n),
        )
        for t, m, u, p, q, n in rows
    ]


def _as_utc(value: datetime | str) -> datetime:
    if isinstance(value, str):  # SQLite's strftime
        value = datetime.fromisoformat(value)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def adjust(session: Session, body: AdjustmentCreate, *, actor: str, actor_role: str) -> UsageRecord:
    """A correction: a new record of the original's tenant, metric and unit, whose
    quantity is added to it; audited. The original is never changed."""
    original = session.get(UsageRecord, body.adjusts_id)
    if original is None:
        raise NotFound(f"no usage record with id {body.adjusts_id!r}")
    if original.adjusts_id is not None:
        raise ValidationFailed(
            "this record is itself an adjustment; adjust the original record "
            f"{original.adjusts_id!r} instead",
            errors=[{"pointer": "#/body/adjusts_id", "detail": "an adjustment"}],
        )
    if body.quantity == 0:
        raise ValidationFailed(
            "an adjustment of 0 changes nothing",
            errors=[{"pointer": "#/body/quantity", "detail": "zero"}],
        )
    adjusted = session.scalar(
        select(func.coalesce(func.sum(UsageRecord.quantity), 0)).where(
            or_(UsageRecord.id == original.id, UsageRecord.adjusts_id == original.id)
        )
    )
    if Decimal(adjusted or 0) + body.quantity < 0:
        raise ValidationFailed(
            f"the record would total {Decimal(adjusted or 0) + body.quantity} "
            f"{original.unit}; usage cannot be negative",
            errors=[{"pointer": "#/body/quantity", "detail": "total below zero"}],
        )
    record = insert_adjustment(
        session, original, body.quantity.quantize(SCALE), reason=body.reason, actor=actor
    )
    record_admin_action(
        session,
        actor=actor,
        actor_role=actor_role,
        action="usage.adjust",
        target_type="usage_record",
        target_id=original.id[:100],
        tenant_id=original.tenant_id,
        details={"adjustment_id": record.id, "quantity": str(body.quantity), "reason": body.reason},
    )
    return record
