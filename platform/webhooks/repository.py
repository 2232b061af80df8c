"""Every statement on webhook targets, messages, deliveries and attempts: the API's
tenant-scoped reads and actions, the events written when a job ends, and the delivery
worker's claims and records.

Each function takes the tenant it works for (or a repository built from its scope) and
filters on it; what runs across every tenant (beat's scan, the admins' health view) is
named ``unscoped_*``.
Every function takes the caller's session; the request or task commits.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, case, func, insert, select, update
from sqlalchemy.orm import Session

from celeriac.platform.db import upsert_insert
from celeriac.platform.models import (
    DeliveryState,
    TargetState,
    Tenant,
    WebhookAttempt,
    WebhookDelivery,
    WebhookMessage,
    WebhookTarget,
    utcnow,
)
from celeriac.platform.repository import HasTenant, TenantRepository, keyset_after


class WebhookTargetRepository(TenantRepository[WebhookTarget]):
    model = WebhookTarget
    not_found = "webhook target"

    def count(self) -> int:
        return self.session.scalar(select(func.count()).select_from(self.select().subquery())) or 0


class MessageRepository(TenantRepository[WebhookMessage]):
    model = WebhookMessage
    not_found = "webhook message"


def tenant_slug(session: Session, tenant_id: uuid.UUID) -> str:
    return session.scalar(select(Tenant.slug).where(Tenant.id == tenant_id)) or ""


# --- events --------------------------------------------------------------------------


def insert_message(
    session: Session,
    tenant_id: uuid.UUID,
    *,
    message_id: str,
    event_type: str,
    event_key: str,
    sealed_payload: bytes,
    created_at: datetime,
) -> bool:
    """The event's message, once per (tenant, event key); False if it existed already."""
    inserted = session.scalar(
        upsert_insert(session, WebhookMessage)
        .values(
            id=message_id,
            tenant_id=tenant_id,
            event_type=event_type,
            event_key=event_key,
            sealed_payload=sealed_payload,
            created_at=created_at,
        )
        .on_conflict_do_nothing(index_elements=["tenant_id", "event_key"])
        .returning(WebhookMessage.id)
    )
    return inserted is not None


def enabled_targets(session: Session, tenant_id: uuid.UUID) -> list[WebhookTarget]:
    return list(
        session.scalars(
            select(WebhookTarget).where(
                WebhookTarget.tenant_id == tenant_id, WebhookTarget.state == TargetState.ENABLED
            )
        )
    )


def disable_tenant_targets(session: Session, tenant_id: uuid.UUID, reason: str) -> int:
    """Disable every enabled target of the tenant (a deleted tenant's: from the commit on
    nothing more is sent to them, and no delivery is billed); returns how many."""
    now = utcnow()
    result = session.execute(
        update(WebhookTarget)
        .where(WebhookTarget.tenant_id == tenant_id, WebhookTarget.state == TargetState.ENABLED)
        .values(state=TargetState.DISABLED, disabled_reason=reason[:200], updated_at=now)
        .execution_options(synchronize_session=False)
    )
    return int(getattr(result, "rowcount", 0) or 0)


def insert_deliveries(
    session: Session,
    tenant_id: uuid.UUID,
    message_id: str,
    targets: Sequence[WebhookTarget],
    now: datetime,
) -> list[str]:
    """One pending delivery of the message per target, due now; returns their ids."""
    rows = [
        {
            "id": uuid.uuid4(),
            "tenant_id": tenant_id,
            "message_id": message_id,
            "target_id": t.id,
            "state": DeliveryState.PENDING,
            "attempt_count": 0,
            "next_attempt_at": now,
            "created_at": now,
            "updated_at": now,
        }
        for t in targets
    ]
    session.execute(insert(WebhookDelivery).values(rows))
    return [str(row["id"]) for row in rows]


# --- the delivery log ----------------------------------------------------------------


def message_deliveries(
    session: Session, scope: HasTenant, message_ids: Sequence[str]
) -> dict[str, list[WebhookDelivery]]:
    found: dict[str, list[WebhookDelivery]] = {m: [] for m in message_ids}
    if not message_ids:
        return found
    rows = session.scalars(
        select(WebhookDelivery)
        .where(
            WebhookDelivery.tenant_id == scope.tenant_id,
            WebhookDelivery.message_id.in_(message_ids),
        )
        .order_by(WebhookDelivery.created_at)
    )
    for row in rows:
        found[row.message_id].append(row)
    return found


def attempts(
    session: Session,
    scope: HasTenant,
    target_id: uuid.UUID,
    filters: Sequence[ColumnElement[bool]],
    cursor: str | None,
    limit: int,
) -> list[WebhookAttempt]:
    """Up to ``limit`` of a target's attempts matching ``filters``, newest first."""
    where = [
        WebhookAttempt.tenant_id == scope.tenant_id,
        WebhookAttempt.target_id == target_id,
        *filters,
    ]
    if cursor:
        where.append(keyset_after(WebhookAttempt.attempted_at, WebhookAttempt.id, cursor))
    return list(
        session.scalars(
            select(WebhookAttempt)
            .where(*where)
            .order_by(WebhookAttempt.attempted_at.desc(), WebhookAttempt.id.desc())
            .limit(limit)
        )
    )


def restart_deliveries(
    session: Session, scope: HasTenant, filters: Sequence[ColumnElement[bool]]
) -> list[WebhookDelivery]:
    """The tenant's deliveries matching ``filters``, pending again and due now."""
    now = utcnow()
    deliveries = list(
        session.scalars(
            select(WebhookDelivery)
            .where(WebhookDelivery.tenant_id == scope.tenant_id, *filters)
            .with_for_update()
        )
    )
    if deliveries:
        session.execute(
            update(WebhookDelivery)
            .where(
                WebhookDelivery.tenant_id == scope.tenant_id,
                WebhookDelivery.id.in_([d.id for d in deliveries]),
            )
            .values(
                state=DeliveryState.PENDING, attempt_count=0, next_attempt_at=now, updated_at=now
            )
            .execution_options(synchronize_session="fetch")
        )
    return deliveries


# --- the delivery worker ---------------------------------------------------------------


def claim_delivery(
    session: Session, delivery_id: uuid.UUID, lease: timedelta
) -> tuple[WebhookDelivery, WebhookTarget, WebhookMessage] | None:
    """A due pending delivery, its due time pushed a lease ahead (compare-and-set: a
    duplicate message finds nothing to do while an attempt is in flight)."""
    now = utcnow()
    row = session.execute(
        update(WebhookDelivery)
        .where(
            WebhookDelivery.id == delivery_id,
            WebhookDelivery.state == DeliveryState.PENDING,
            WebhookDelivery.next_attempt_at <= now,
        )
        .values(next_attempt_at=now + lease, updated_at=now)
        .returning(WebhookDelivery.tenant_id, WebhookDelivery.target_id, WebhookDelivery.message_id)
    ).one_or_none()
    if row is None:
        return None
    delivery = session.scalars(
        select(WebhookDelivery).where(
            WebhookDelivery.tenant_id == row.tenant_id, WebhookDelivery.id == delivery_id
        )
    ).one()
    target = session.scalars(
        select(WebhookTarget).where(
            WebhookTarget.tenant_id == row.tenant_id, WebhookTarget.id == row.target_id
        )
    ).one()
    message = session.scalars(
        select(WebhookMessage).where(
            WebhookMessage.tenant_id == row.tenant_id, WebhookMessage.id == row.message_id
        )
    ).one()
    return delivery, target, message


def set_delivery(
    session: Session, tenant_id: uuid.UUID, delivery_id: uuid.UUID, **values: Any
) -> None:
    """Set columns of a delivery still pending (fail it, postpone it)."""
    session.execute(
        update(WebhookDelivery)
        .where(
            WebhookDelivery.tenant_id == tenant_id,
            WebhookDelivery.id == delivery_id,
            WebhookDelivery.state == DeliveryState.PENDING,
        )
        .values(**values)
    )


def lock_delivery_and_target(
    session: Session, tenant_id: uuid.UUID, delivery_id: uuid.UUID, target_id: uuid.UUID
) -> tuple[WebhookDelivery, WebhookTarget]:
    """The delivery and its target, their rows held until commit (an attempt's record)."""
    delivery = session.scalars(
        select(WebhookDelivery)
        .where(WebhookDelivery.tenant_id == tenant_id, WebhookDelivery.id == delivery_id)
        .with_for_update()
    ).one()
    target = session.scalars(
        select(WebhookTarget)
        .where(WebhookTarget.tenant_id == tenant_id, WebhookTarget.id == target_id)
        .with_for_update()
    ).one()
    return delivery, target


def add_attempt(session: Session, attempt: WebhookAttempt) -> None:
    session.add(attempt)


def unscoped_due_deliveries(
    session: Session, now: datetime, limit: int
) -> list[tuple[uuid.UUID, str]]:
    """Beat, across tenants: (delivery id, tenant slug) of the pending deliveries that are
    due, oldest due first."""
    rows = session.execute(
        select(WebhookDelivery.id, Tenant.slug)
        .join(Tenant, Tenant.id == WebhookDelivery.tenant_id)
        .where(
            WebhookDelivery.state == DeliveryState.PENDING,
            WebhookDelivery.next_attempt_at <= now,
        )
        .order_by(WebhookDelivery.next_attempt_at)
        .limit(limit)
    ).all()
    return [(row[0], row[1]) for row in rows]


def attempt_status_counts(session: Session, tenant_id: uuid.UUID) -> dict[int | None, int]:
    """The tenant's delivery attempts by HTTP status (None: no answer); for its metrics."""
    rows = session.execute(
        select(WebhookAttempt.status_code, func.count())
        .where(WebhookAttempt.tenant_id == tenant_id)
        .group_by(WebhookAttempt.status_code)
    )
    return {status: int(count) for status, count in rows}


def unscoped_health_by_tenant(session: Session, limit: int = 500) -> list[dict[str, Any]]:
    """Admins, across tenants (the console's webhook health page): targets, disabled ones
    and those failing now, per tenant; tenants with a disabled or failing target first."""
    failing = func.sum(case((WebhookTarget.failing_since.is_not(None), 1), else_=0))
    disabled = func.sum(case((WebhookTarget.state == TargetState.DISABLED, 1), else_=0))
    rows = session.execute(
        select(
            Tenant.id,
            Tenant.slug,
            func.count(WebhookTarget.id),
            disabled,
            failing,
            func.min(WebhookTarget.failing_since),
        )
        .join(WebhookTarget, WebhookTarget.tenant_id == Tenant.id)
        .group_by(Tenant.id, Tenant.slug)
        .order_by((disabled + failing).desc(), Tenant.slug)
        .limit(limit)
    ).all()
    return [
        {
            "tenant_id": t,
            "slug": slug,
            "targets": int(n),
            "disabled": int(d or 0),
            "failing": int(f or 0),
            "failing_since": since,
        }
        for t, slug, n, d, f, since in rows
    ]
