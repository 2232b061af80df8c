"""Webhook target routes: a tenant key with ``webhooks:manage`` manages its tenant's
targets. Another tenant's target is a 404."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Response, status

from celeriac.platform.api.deps import Authenticator, SessionDep, SettingsDep
from celeriac.platform.api.problems import problem_openapi
from celeriac.platform.api.schemas import Page
from celeriac.platform.auth.context import TenantContext
from celeriac.platform.keys.service import Scope
from celeriac.platform.webhooks import service
from celeriac.platform.webhooks.destinations import Resolver, resolve_host
from celeriac.platform.webhooks.schemas import (
    SecretRotation,
    WebhookTargetCreate,
    WebhookTargetOut,
    WebhookTargetUpdate,
    WebhookTargetWithSecret,
)

router = APIRouter(prefix="/v1/webhooks", tags=["webhooks"])

WebhooksManager = Annotated[TenantContext, Depends(Authenticator(Scope.WEBHOOKS_MANAGE))]
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
    body: WebhookTargetCreate, ctx: WebhooksManager, session: SessionDep, settings: SettingsDep,
    resolve: ResolverDep, response: Response,
) -> WebhookTargetWithSecret:  # fmt: skip
    """Register a URL to receive the tenant's events. The URL must be https on a public
    address. The answer carries the signing secret, shown only this once. A tenant has at
    most its `max_webhook_targets` quota of targets (409 beyond; see `GET /v1/quotas`)."""
    issued = service.create_target(
        session, ctx, url=body.url, event_types=body.event_types, description=body.description,
        max_deliveries_per_second=body.max_deliveries_per_second,
        settings=settings.webhooks, resolve=resolve,
    )  # fmt: skip
    response.headers["Location"] = f"/v1/webhooks/{issued.target.id}"
    return _with_secret(issued, response)


@router.get("", response_model=Page[WebhookTargetOut])
def list_targets(
    ctx: WebhooksManager, session: SessionDep, cursor: str | None = None, limit: Limit = 50
) -> Page[WebhookTargetOut]:
    """The tenant's webhook targets, newest first, with cursor pagination."""
    rows, next_cursor = service.WebhookTargetRepository(session, ctx).page(
        cursor=cursor, limit=limit
    )
    return Page(data=[WebhookTargetOut.model_validate(t) for t in rows], next_cursor=next_cursor)


@router.get("/{target_id}", response_model=WebhookTargetOut)
def get_target(target_id: uuid.UUID, ctx: WebhooksManager, session: SessionDep) -> WebhookTargetOut:
    """One webhook target (never its secret)."""
    return WebhookTargetOut.model_validate(
        service.WebhookTargetRepository(session, ctx).get(target_id)
    )


@router.patch("/{target_id}", response_model=WebhookTargetOut)
def update_target(
    target_id: uuid.UUID, body: WebhookTargetUpdate, ctx: WebhooksManager, session: SessionDep,
    settings: SettingsDep, resolve: ResolverDep,
) -> WebhookTargetOut:  # fmt: skip
    """Change the URL (checked again), event types, description or delivery rate; fields
    left out keep their value, and `max_deliveries_per_second: null` removes the limit."""
    target = service.update_target(
        session, ctx, target_id, changes=body.model_dump(mode="json", exclude_unset=True),
        settings=settings.webhooks, resolve=resolve,
    )  # fmt: skip
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
    target_id: uuid.UUID, ctx: WebhooksManager, session: SessionDep, response: Response,
    body: SecretRotation | None = None,
) -> WebhookTargetWithSecret:  # fmt: skip
    """Issue a new signing secret, shown only in this answer. Deliveries are signed with
    both the new and the replaced secret until `previous_secret_expires_at` (24 hours by
    default), so receivers can switch without missing one."""
    grace = timedelta(seconds=(body or SecretRotation()).previous_secret_expires_in_seconds)
    issued = service.rotate_secret(session, ctx, target_id, previous_secret_grace=grace)
    return _with_secret(issued, response)
