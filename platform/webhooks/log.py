"""A tenant's delivery log: messages and their deliveries, every attempt, and the manual
actions on them (resend one message, recover failed deliveries, send a test event). Every
query is scoped to the calling tenant; another tenant's message or target is a 404."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import ColumnElement, select, update
from sqlalchemy.orm import Session

from celeriac.platform.db import run_after_commit
from celeriac.platform.errors import Conflict, NotFound
from celeriac.platform.models import (
    AttemptTrigger,
    DeliveryState,
    Priority,
    TargetState,
    Tenant,
    WebhookAttempt,
    WebhookDelivery,
    WebhookMessage,
    utcnow,
)
from celeriac.platform.repository import HasTenant, TenantRepository, encode_cursor, keyset_after
from celeriac.platform.webhooks import events
from celeriac.platform.webhooks.service import EventType, WebhookTargetRepository


class MessageRepository(TenantRepository[WebhookMessage]):
    model = WebhookMessage
    not_found = "webhook message"


def message_deliveries(
    session: Session, scope: HasTenant, message_ids: Sequence[str]
) -> dict[str, list[WebhookDelivery]]:
    found: dict[str, list[WebhookDelivery]] = {m: [] for m in message_ids}
    if not message_ids:
        return found
    rows = session.scalars(
        select(WebhookDelivery)
        .where(WebhookDelivery.tenant_id == scope.tenant_id,
               WebhookDelivery.message_id.in_(message_ids))
        .order_by(WebhookDelivery.created_at)
    )  # fmt: skip
    for row in rows:
        found[row.message_id].append(row)
    return found


def attempts_page(
    session: Session,
    scope: HasTenant,
    target_id: uuid.UUID,
    *,
    status_code: int | None,
    succeeded: bool | None,
    trigger: AttemptTrigger | None,
    since: datetime | None,
    until: datetime | None,
    cursor: str | None,
    limit: int,
) -> tuple[list[WebhookAttempt], str | None]:
    """A target's attempts, newest first (keyset on attempted_at, id)."""
    WebhookTargetRepository(session, scope).get(target_id)  # 404 for another tenant's
    filters: list[ColumnElement[bool]] = [
        WebhookAttempt.tenant_id == scope.tenant_id, WebhookAttempt.target_id == target_id,
    ]  # fmt: skip
    if status_code is not None:
        filters.append(WebhookAttempt.status_code == status_code)
    if succeeded is not None:
        ok = WebhookAttempt.status_code.between(200, 299)
        filters.append(ok if succeeded else ~ok | WebhookAttempt.status_code.is_(None))
    if trigger is not None:
        filters.append(WebhookAttempt.trigger == trigger)
    if since is not None:
        filters.append(WebhookAttempt.attempted_at >= since)
    if until is not None:
        filters.append(WebhookAttempt.attempted_at < until)
    if cursor:
        filters.append(keyset_after(WebhookAttempt.attempted_at, WebhookAttempt.id, cursor))
    rows = list(
        session.scalars(
            select(WebhookAttempt)
            .where(*filters)
            .order_by(WebhookAttempt.attempted_at.desc(), WebhookAttempt.id.desc())
            .limit(limit + 1)
        )
    )
    if len(rows) <= limit:
        return rows, None
    last = rows[limit - 1]
    return rows[:limit], encode_cursor(last.attempted_at, last.id)


def resend(
    session: Session, scope: HasTenant, message_id: str, target_id: uuid.UUID | None
) -> list[WebhookDelivery]:
    """Send a message again to its targets (or one of them), now, as a new round."""
    MessageRepository(session, scope).get(message_id)
    filters = [WebhookDelivery.tenant_id == scope.tenant_id,
               WebhookDelivery.message_id == message_id]  # fmt: skip
    if target_id is not None:
        WebhookTargetRepository(session, scope).get(target_id)
        filters.append(WebhookDelivery.target_id == target_id)
    deliveries = _restart(session, scope, filters, AttemptTrigger.MANUAL)
    if target_id is not None and not deliveries:
        raise NotFound(f"message {message_id} was not sent to target {target_id}")
    return deliveries


def recover(
    session: Session, scope: HasTenant, target_id: uuid.UUID, since: datetime
) -> list[WebhookDelivery]:
    """Send again every delivery to the target that failed, of messages since ``since``."""
    WebhookTargetRepository(session, scope).get(target_id)
    filters = [WebhookDelivery.tenant_id == scope.tenant_id,
               WebhookDelivery.target_id == target_id,
               WebhookDelivery.state == DeliveryState.FAILED,
               WebhookDelivery.created_at >= since]  # fmt: skip
    return _restart(session, scope, filters, AttemptTrigger.REPLAY)


def send_test(session: Session, scope: HasTenant, target_id: uuid.UUID) -> str:
    """A ``webhook.test`` event to this target only (even if its filter excludes it)."""
    target = WebhookTargetRepository(session, scope).get(target_id)
    if target.state is not TargetState.ENABLED:
        raise Conflict(f"target {target_id} is disabled; enable it first")
    data = {"target_id": str(target.id), "message": "a test event sent through the API"}
    message_id = events.enqueue(
        session, scope.tenant_id, EventType.WEBHOOK_TEST, f"test:{uuid.uuid4().hex}", data,
        targets=[target], trigger=AttemptTrigger.MANUAL.value,
    )  # fmt: skip
    assert message_id is not None
    return message_id


def _restart(
    session: Session, scope: HasTenant, filters: list[ColumnElement[bool]],
    trigger: AttemptTrigger,
) -> list[WebhookDelivery]:  # fmt: skip
    now = utcnow()
    deliveries = list(session.scalars(select(WebhookDelivery).where(*filters).with_for_update()))
    if not deliveries:
        return []
    session.execute(
        update(WebhookDelivery)
        .where(WebhookDelivery.id.in_([d.id for d in deliveries]))
        .values(state=DeliveryState.PENDING, attempt_count=0, next_attempt_at=now,
                updated_at=now)
        .execution_options(synchronize_session="fetch")
    )  # fmt: skip
    slug = session.scalar(select(Tenant.slug).where(Tenant.id == scope.tenant_id)) or ""
    ids = [str(d.id) for d in deliveries]
    run_after_commit(
        session, lambda: events.publish_deliveries(ids, slug, Priority.NORMAL, trigger.value)
    )
    return deliveries
