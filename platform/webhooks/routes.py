"""Webhook target routes: a tenant key with ``webhooks:manage`` manages its tenant's
targets. Another tenant's target is a 404."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Response, status

from celeriac.platform.api.deps import Admit, SessionDep, SettingsDep
from celeriac.platform.api.problems import problem_openapi
from celeriac.platform.api.schemas import Page, Timestamp
from celeriac.platform.auth.context import TenantContext
from celeriac.platform.keys.service import Scope
from celeriac.platform.models import AttemptTrigger, WebhookDelivery, WebhookMessage
from celeriac.platform.webhooks import log, payloads, repository, service
from celeriac.platform.webhooks.destinations import Resolver, resolve_host
from celeriac.platform.webhooks.schemas import (
    DeliveriesRestarted,
    RecoverRequest,
    ResendRequest,
    SecretRotation,
    TestEventSent,
    WebhookAttemptOut,
    WebhookDeliveryOut,
    WebhookMessageOut,
    WebhookTargetCreate,
    WebhookTargetOut,
    WebhookTargetUpdate,
    WebhookTargetWithSecret,
)

router = APIRouter(prefix="/v1/webhooks", tags=["webhooks"])
# Messages live beside targets, not under them: /v1/webhooks/messages would also match
# /v1/webhooks/{target_id} for every method the target routes have.
messages_router = APIRouter(prefix="/v1/webhook-messages", tags=["webhooks"])

WebhooksManager = Annotated[TenantContext, Depends(Admit(Scope.WEBHOOKS_MANAGE).tenant)]
Limit = Annotated[int, Query(ge=1, le=100)]


def destination_resolver() -> Resolver:
    """The DNS resolver that destination URLs are checked with (tests override it)."""
    return resolve_host


ResolverDep = Annotated[Resolver, Depends(destination_resolver)]


def _with_secret(issued: service.IssuedSecret, response: Response) -> WebhookTargetWithSecret:
    response.headers["Cache-Control"] = "no-store"
    return WebhookTargetWithSecret(
        **WebhookTargetOut.model_validate(issued.target).model_dump(), secret=issued.secret
    )


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=WebhookTargetWithSecret,
    responses=problem_openapi(409),
)
def create_target(
    body: WebhookTargetCreate,
    ctx: WebhooksManager,
    session: SessionDep,
    settings: SettingsDep,
    resolve: ResolverDep,
    response: Response,
) -> WebhookTargetWithSecret:
    """Register a URL to receive the tenant's events. The URL must be https on a public
    address. The answer carries the signing secret, shown only this once. A tenant has at
    most its `max_webhook_targets` quota of targets (409 beyond; see `GET /v1/quotas`)."""
    issued = service.create_target(
        session,
        ctx,
        url=body.url,
        event_types=body.event_types,
        description=body.description,
        max_deliveries_per_second=body.max_deliveries_per_second,
        settings=settings.webhooks,
        resolve=resolve,
    )
    response.headers["Location"] = f"/v1/webhooks/{issued.target.id}"
    return _with_secret(issued, response)


@router.get("", response_model=Page[WebhookTargetOut])
def list_targets(
    ctx: WebhooksManager, session: SessionDep, cursor: str | None = None, limit: Limit = 50
) -> Page[WebhookTargetOut]:
    """The tenant's webhook targets, newest first, with cursor pagination."""
    rows, next_cursor = repository.WebhookTargetRepository(session, ctx).page(
        cursor=cursor, limit=limit
    )
    return Page(data=[WebhookTargetOut.model_validate(t) for t in rows], next_cursor=next_cursor)


@router.get("/{target_id}", response_model=WebhookTargetOut)
def get_target(target_id: uuid.UUID, ctx: WebhooksManager, session: SessionDep) -> WebhookTargetOut:
    """One webhook target (never its secret)."""
    return WebhookTargetOut.model_validate(
        repository.WebhookTargetRepository(session, ctx).get(target_id)
    )


@router.patch("/{target_id}", response_model=WebhookTargetOut)
def update_target(
    target_id: uuid.UUID,
    body: WebhookTargetUpdate,
    ctx: WebhooksManager,
    session: SessionDep,
    settings: SettingsDep,
    resolve: ResolverDep,
) -> WebhookTargetOut:
    """Change the URL (checked again), event types, description or delivery rate; fields
    left out keep their value, and `max_deliveries_per_second: null` removes the limit."""
    target = service.update_target(
        session,
        ctx,
        target_id,
        changes=body.model_dump(mode="json", exclude_unset=True),
        settings=settings.webhooks,
        resolve=resolve,
    )
    return WebhookTargetOut.model_validate(target)


@router.delete("/{target_id}", status_code=status.HTTP_204_NO_CONTENT)
def delete_target(target_id: uuid.UUID, ctx: WebhooksManager, session: SessionDep) -> None:
    """Delete a target, with its deliveries and their attempts."""
    service.delete_target(session, ctx, target_id)


@router.post("/{target_id}/disable", response_model=WebhookTargetOut)
def disable_target(
    target_id: uuid.UUID, ctx: WebhooksManager, session: SessionDep
) -> WebhookTargetOut:
    """Stop delivering to the target (idempotent)."""
    return WebhookTargetOut.model_validate(service.disable_target(session, ctx, target_id))


@router.post("/{target_id}/enable", response_model=WebhookTargetOut)
def enable_target(
    target_id: uuid.UUID, ctx: WebhooksManager, session: SessionDep
) -> WebhookTargetOut:
    """Deliver to the target again; clears the reason it was disabled and its run of
    failures (idempotent)."""
    return WebhookTargetOut.model_validate(service.enable_target(session, ctx, target_id))


@router.post("/{target_id}/rotate-secret", response_model=WebhookTargetWithSecret)
def rotate_secret(
    target_id: uuid.UUID,
    ctx: WebhooksManager,
    session: SessionDep,
    response: Response,
    body: SecretRotation | None = None,
) -> WebhookTargetWithSecret:
    """Issue a new signing secret, shown only in this answer. Deliveries are signed with
    both the new and the replaced secret until `previous_secret_expires_at` (24 hours by
    default), so receivers can switch without missing one."""
    grace = timedelta(seconds=(body or SecretRotation()).previous_secret_expires_in_seconds)
    issued = service.rotate_secret(session, ctx, target_id, previous_secret_grace=grace)
    return _with_secret(issued, response)


@router.post("/{target_id}/end-secret-overlap", response_model=WebhookTargetOut)
def end_secret_overlap(
    target_id: uuid.UUID, ctx: WebhooksManager, session: SessionDep
) -> WebhookTargetOut:
    """Stop signing with the secret replaced by the last rotation, before its grace ends
    (once every receiver uses the new one)."""
    return WebhookTargetOut.model_validate(service.end_secret_overlap(session, ctx, target_id))


@router.get("/{target_id}/attempts", response_model=Page[WebhookAttemptOut])
def list_attempts(
    target_id: uuid.UUID,
    ctx: WebhooksManager,
    session: SessionDep,
    status_code: Annotated[int | None, Query(ge=100, le=599)] = None,
    succeeded: bool | None = None,
    trigger: AttemptTrigger | None = None,
    since: Timestamp | None = None,
    until: Timestamp | None = None,
    cursor: str | None = None,
    limit: Limit = 50,
) -> Page[WebhookAttemptOut]:
    """Every delivery attempt to the target, newest first: status code, the first 8 KiB of
    the answer, duration, error, what triggered it and when the next one is due."""
    rows, next_cursor = log.attempts_page(
        session,
        ctx,
        target_id,
        status_code=status_code,
        succeeded=succeeded,
        trigger=trigger,
        since=since,
        until=until,
        cursor=cursor,
        limit=limit,
    )
    return Page(data=[WebhookAttemptOut.model_validate(a) for a in rows], next_cursor=next_cursor)


@router.post(
    "/{target_id}/recover",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=DeliveriesRestarted,
)
def recover(
    target_id: uuid.UUID, body: RecoverRequest, ctx: WebhooksManager, session: SessionDep
) -> DeliveriesRestarted:
    """Send again every failed delivery to the target of messages since `since`."""
    restarted = log.recover(session, ctx, target_id, body.since)
    return DeliveriesRestarted(deliveries=[WebhookDeliveryOut.model_validate(d) for d in restarted])


@router.post(
    "/{target_id}/test",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=TestEventSent,
    responses=problem_openapi(409),
)
def send_test_event(
    target_id: uuid.UUID, ctx: WebhooksManager, session: SessionDep
) -> TestEventSent:
    """Send a `webhook.test` event to this target (409 if it is disabled)."""
    return TestEventSent(message_id=log.send_test(session, ctx, target_id))


def _message_out(message: WebhookMessage, deliveries: list[WebhookDelivery]) -> WebhookMessageOut:
    return WebhookMessageOut(
        **{k: getattr(message, k) for k in ("id", "event_type", "created_at")},
        payload=payloads.reveal(message),
        deliveries=[WebhookDeliveryOut.model_validate(d) for d in deliveries],
    )


@messages_router.get("", response_model=Page[WebhookMessageOut])
def list_messages(
    ctx: WebhooksManager,
    session: SessionDep,
    event_type: str | None = None,
    cursor: str | None = None,
    limit: Limit = 50,
) -> Page[WebhookMessageOut]:
    """The tenant's events, newest first, each with its delivery state per target."""
    filters = [] if event_type is None else [WebhookMessage.event_type == event_type]
    rows, next_cursor = repository.MessageRepository(session, ctx).page(
        *filters, cursor=cursor, limit=limit
    )
    deliveries = log.message_deliveries(session, ctx, [m.id for m in rows])
    return Page(
        data=[_message_out(m, list(deliveries[m.id])) for m in rows], next_cursor=next_cursor
    )


@messages_router.get("/{message_id}", response_model=WebhookMessageOut)
def get_message(message_id: str, ctx: WebhooksManager, session: SessionDep) -> WebhookMessageOut:
    """One event and its delivery state per target."""
    message = repository.MessageRepository(session, ctx).get(message_id)
    deliveries = log.message_deliveries(session, ctx, [message.id])
    return _message_out(message, list(deliveries[message.id]))


@messages_router.post(
    "/{message_id}/resend",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=DeliveriesRestarted,
)
def resend_message(
    message_id: str, ctx: WebhooksManager, session: SessionDep, body: ResendRequest | None = None
) -> DeliveriesRestarted:
    """Send the event again, now, to every target it went to (or `target_id` only)."""
    restarted = log.resend(session, ctx, message_id, (body or ResendRequest()).target_id)
    return DeliveriesRestarted(deliveries=[WebhookDeliveryOut.model_validate(d) for d in restarted])
