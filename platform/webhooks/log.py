"""A tenant's delivery log: messages and their deliveries, every attempt, and the manual
actions on them (resend one message, recover failed deliveries, send a test event). Every
query is scoped to the calling tenant; another tenant's message or target is a 404."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import ColumnElement
from sqlalchemy.orm import Session

from celeriac.platform.errors import Conflict, NotFound
from celeriac.platform.models import (
    AttemptTrigger,
    DeliveryState,
    Priority,
    TargetState,
    WebhookAttempt,
    WebhookDelivery,
)
from celeriac.platform.repository import HasTenant, encode_cursor
from celeriac.platform.tasks import default_publisher
from celeriac.platform.webhooks import events, repository
from celeriac.platform.webhooks.repository import MessageRepository, WebhookTargetRepository
from celeriac.platform.webhooks.service import EventType


def message_deliveries(
    session: Session, scope: HasTenant, message_ids: Sequence[str]
) -> dict[str, list[WebhookDelivery]]:
    return repository.message_deliveries(session, scope, message_ids)


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
    filters: list[ColumnElement[bool]] = []
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
    rows = repository.attempts(session, scope, target_id, filters, cursor, limit + 1)
    if len(rows) <= limit:
        return rows, None
    last = rows[limit - 1]
    return rows[:limit], encode_cursor(last.attempted_at, last.id)


def resend(
    session: Session, scope: HasTenant, message_id: str, target_id: uuid.UUID | None
) -> list[WebhookDelivery]:
    """Send a message again to its targets (or one of them), now, as a new round."""
    MessageRepository(session, scope).get(message_id)
    filters: list[ColumnElement[bool]] = [WebhookDelivery.message_id == message_id]
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
    filters: list[ColumnElement[bool]] = [
        WebhookDelivery.target_id == target_id,
        WebhookDelivery.state == DeliveryState.FAILED,
        WebhookDelivery.created_at >= since,
    ]
    return _restart(session, scope, filters, AttemptTrigger.REPLAY)


def send_test(session: Session, scope: HasTenant, target_id: uuid.UUID) -> str:
    """A ``webhook.test`` event to this target only (even if its filter excludes it)."""
    target = WebhookTargetRepository(session, scope).get(target_id)
    if target.state is not TargetState.ENABLED:
        raise Conflict(f"target {target_id} is disabled; enable it first")
    data = {"target_id": str(target.id), "message": "a test event sent through the API"}
    message_id = events.enqueue(
        session,
        scope.tenant_id,
        EventType.WEBHOOK_TEST,
        f"test:{uuid.uuid4().hex}",
        data,
        targets=[target],
        trigger=AttemptTrigger.MANUAL.value,
    )
    assert message_id is not None
    return message_id


def _restart(
    session: Session,
    scope: HasTenant,
    filters: list[ColumnElement[bool]],
    trigger: AttemptTrigger,
) -> list[WebhookDelivery]:
    deliveries = repository.restart_deliveries(session, scope, filters)
    if not deliveries:
        return []
    slug = repository.tenant_slug(session, scope.tenant_id)
    ids = [str(d.id) for d in deliveries]
    default_publisher().after_commit(
        session, events.delivery_messages(ids, slug, Priority.NORMAL, trigger.value)
    )
    return deliveries
