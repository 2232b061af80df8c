"""Webhook targets: where a tenant's events are sent, and the secrets that sign them.

A signing secret is stored only envelope-encrypted under the tenant's key and bound to its
target's id. It leaves this module in clear in the return values of :func:`create_target`
and :func:`rotate_secret` (shown to the tenant once) and of :func:`signing_secrets` (for
delivery). Every query goes through :class:`WebhookTargetRepository`, scoped to a tenant.
"""

from __future__ import annotations

import base64
import secrets
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from sqlalchemy import select
from sqlalchemy.orm import Session

from celeriac.platform.crypto.keys import EncryptionContext
from celeriac.platform.errors import Conflict, ValidationFailed
from celeriac.platform.models import TargetState, Tenant, WebhookTarget, utcnow
from celeriac.platform.quotas.plans import tenant_limits
from celeriac.platform.repository import HasTenant
from celeriac.platform.settings import WebhookSettings
from celeriac.platform.tenant_data import envelope
from celeriac.platform.webhooks.destinations import (
    Resolver,
    UnsafeDestination,
    check_destination,
    parse_allowed_networks,
    resolve_host,
)
from celeriac.platform.webhooks.repository import WebhookTargetRepository

SECRET_PREFIX = "whsec_"  # noqa: S105 (a prefix, not a secret)
SECRET_BYTES = 32
DEFAULT_PREVIOUS_SECRET_GRACE = timedelta(hours=24)
MAX_PREVIOUS_SECRET_GRACE = timedelta(days=7)
DISABLED_BY_TENANT = "disabled through the API"


class EventType(StrEnum):
    """The events a target can receive."""

    JOB_SUCCEEDED = "job.succeeded"
    JOB_PARTIAL = "job.partial"
    JOB_FAILED = "job.failed"
    JOB_CANCELLED = "job.cancelled"
    JOB_EXPIRED = "job.expired"
    WEBHOOK_TEST = "webhook.test"
    WEBHOOK_DISABLED = "webhook.disabled"


class EventTypeFilter(StrEnum):
    """What a target subscribes to: an exact :class:`EventType`, a family or everything."""

    JOB_SUCCEEDED = "job.succeeded"
    JOB_PARTIAL = "job.partial"
    JOB_FAILED = "job.failed"
    JOB_CANCELLED = "job.cancelled"
    JOB_EXPIRED = "job.expired"
    WEBHOOK_TEST = "webhook.test"
    WEBHOOK_DISABLED = "webhook.disabled"
    ANY_JOB = "job.*"
    ANY_WEBHOOK = "webhook.*"
    ANY = "*"


def event_type_matches(filters: Iterable[str], event_type: str) -> bool:
    """Whether a target subscribed to ``filters`` receives ``event_type``."""
    return any(
        f in ("*", event_type) or (f.endswith(".*") and event_type.startswith(f[:-1]))
        for f in filters
    )


class TargetLimitReached(Conflict):
    pass


@dataclass(frozen=True)
class IssuedSecret:
    """A target and its new signing secret in the form shown to the tenant (once)."""

    target: WebhookTarget
    secret: str


def checked_url(url: str, settings: WebhookSettings, resolve: Resolver = resolve_host) -> str:
    """The normalised form of ``url`` once it passed the SSRF checks; else a 422 on the URL."""
    try:
        destination = check_destination(
            url,
            allow_http=settings.allow_http,
            allowed_networks=parse_allowed_networks(settings.allowed_cidrs),
            resolve=resolve,
        )
    except UnsafeDestination as exc:
        raise ValidationFailed(
            str(exc), errors=[{"pointer": "#/body/url", "detail": str(exc)}]
        ) from exc
    return destination.url


def create_target(
    session: Session,
    scope: HasTenant,
    *,
    url: str,
    event_types: Sequence[str],
    description: str = "",
    max_deliveries_per_second: float | None = None,
    settings: WebhookSettings,
    resolve: Resolver = resolve_host,
) -> IssuedSecret:
    """Register a target (at most the tenant's ``max_webhook_targets`` quota) with a new
    signing secret."""
    # Resolve before taking any lock: DNS may take seconds.
    normalised = checked_url(url, settings, resolve)
    _lock_tenant(session, scope.tenant_id)
    limit = tenant_limits(session, scope.tenant_id).max_webhook_targets
    if WebhookTargetRepository(session, scope).count() >= limit:
        raise TargetLimitReached(
            f"this tenant may have at most {limit} webhook targets (its quota); "
            "delete one before adding another",
            extra={"limit": limit, "policy": "webhook-targets"},
        )
    # The id is bound into the secret's encryption context, so it is chosen before the row.
    target_id = uuid.uuid4()
    secret = secrets.token_bytes(SECRET_BYTES)
    target = WebhookTarget(
        id=target_id,
        tenant_id=scope.tenant_id,
        url=normalised,
        description=description,
        event_types=[str(f) for f in event_types],
        secret_ciphertext=_seal(scope.tenant_id, target_id, secret),
        state=TargetState.ENABLED,
        max_deliveries_per_second=max_deliveries_per_second,
    )
    session.add(target)
    session.flush()
    return IssuedSecret(target=target, secret=_shown(secret))


def update_target(
    session: Session,
    scope: HasTenant,
    target_id: uuid.UUID,
    *,
    changes: Mapping[str, object],
    settings: WebhookSettings,
    resolve: Resolver = resolve_host,
) -> WebhookTarget:
    """Change the url (checked again), event types, description or delivery rate."""
    updates = dict(changes)
    if "url" in updates:
        updates["url"] = checked_url(str(updates["url"]), settings, resolve)
    if "event_types" in updates:
        filters = updates["event_types"]
        assert isinstance(filters, list)
        updates["event_types"] = [str(f) for f in filters]
    target = WebhookTargetRepository(session, scope).get(target_id)
    for field, value in updates.items():
        setattr(target, field, value)
    session.flush()
    return target


def delete_target(session: Session, scope: HasTenant, target_id: uuid.UUID) -> None:
    """Delete a target; its deliveries and attempts go with it (ON DELETE CASCADE)."""
    target = WebhookTargetRepository(session, scope).get(target_id)
    session.delete(target)
    session.flush()


def disable_target(
    session: Session, scope: HasTenant, target_id: uuid.UUID, *, reason: str = DISABLED_BY_TENANT
) -> WebhookTarget:
    """Stop sending to a target (idempotent: a disabled target keeps its first reason)."""
    target = WebhookTargetRepository(session, scope).get(target_id)
    if target.state is not TargetState.DISABLED:
        target.state = TargetState.DISABLED
        target.disabled_reason = reason
        session.flush()
    return target


def enable_target(session: Session, scope: HasTenant, target_id: uuid.UUID) -> WebhookTarget:
    """Send to a target again, starting a fresh failure count (idempotent)."""
    target = WebhookTargetRepository(session, scope).get(target_id)
    # Only on a real change: calling enable on an enabled target must not reset the run of
    # failures that leads to automatic disabling.
    if target.state is not TargetState.ENABLED:
        target.state = TargetState.ENABLED
        target.disabled_reason = None
        target.failing_since = None
        session.flush()
    return target


def rotate_secret(
    session: Session,
    scope: HasTenant,
    target_id: uuid.UUID,
    *,
    previous_secret_grace: timedelta = DEFAULT_PREVIOUS_SECRET_GRACE,
) -> IssuedSecret:
    """A new signing secret; the current one keeps signing (second) during the grace.

    There is one previous slot: rotating again within the grace drops the older secret.
    A zero grace drops the current secret at once.
    """
    if not timedelta(0) <= previous_secret_grace <= MAX_PREVIOUS_SECRET_GRACE:
        raise ValidationFailed("the previous secret's grace must be between 0 and 7 days")
    # Locked so that two concurrent rotations cannot both demote the same secret.
    target = WebhookTargetRepository(session, scope).get(target_id, for_update=True)
    if previous_secret_grace > timedelta(0):
        target.previous_secret_ciphertext = target.secret_ciphertext
        target.previous_secret_expires_at = utcnow() + previous_secret_grace
    else:
        target.previous_secret_ciphertext = None
        target.previous_secret_expires_at = None
    secret = secrets.token_bytes(SECRET_BYTES)
    target.secret_ciphertext = _seal(target.tenant_id, target.id, secret)
    session.flush()
    return IssuedSecret(target=target, secret=_shown(secret))


def end_secret_overlap(session: Session, scope: HasTenant, target_id: uuid.UUID) -> WebhookTarget:
    """Drop the secret replaced by the last rotation: deliveries carry one signature."""
    target = WebhookTargetRepository(session, scope).get(target_id, for_update=True)
    target.previous_secret_ciphertext = None
    target.previous_secret_expires_at = None
    session.flush()
    return target


def signing_secrets(target: WebhookTarget, *, now: datetime | None = None) -> list[bytes]:
    """The raw secrets to sign a delivery to ``target`` with: the current one first, then the
    previous one while its grace lasts. Decrypted with ``target``'s tenant key; a ciphertext
    copied to another target or tenant fails to decrypt."""
    now = now or utcnow()
    cipher = envelope()
    tenant_id, context = str(target.tenant_id), _secret_context(target.id)
    found = [cipher.decrypt(tenant_id, target.secret_ciphertext, context)]
    previous, expires_at = target.previous_secret_ciphertext, target.previous_secret_expires_at
    if previous is not None and expires_at is not None and now < expires_at:
        found.append(cipher.decrypt(tenant_id, previous, context))
    return found


def _secret_context(target_id: uuid.UUID) -> EncryptionContext:
    return {"purpose": "webhook-secret", "target_id": str(target_id)}


def _seal(tenant_id: uuid.UUID, target_id: uuid.UUID, secret: bytes) -> bytes:
    return envelope().encrypt(str(tenant_id), secret, _secret_context(target_id))


def _shown(secret: bytes) -> str:
    return SECRET_PREFIX + base64.b64encode(secret).decode()


def _lock_tenant(session: Session, tenant_id: uuid.UUID) -> None:
    """Serialise target creation per tenant so that concurrent requests cannot pass the
    limit together. NO KEY UPDATE leaves the foreign-key checks of other inserts
    (KEY SHARE) unblocked. SQLite (embedded mode) ignores it."""
    session.execute(select(Tenant.id).where(Tenant.id == tenant_id).with_for_update(key_share=True))
