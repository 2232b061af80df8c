"""API key lifecycle; the plaintext leaves this module once, in the return value."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from sqlalchemy.orm import Session

from celeriac.platform.db import run_after_commit
from celeriac.platform.errors import Forbidden, ValidationFailed
from celeriac.platform.keys.tokens import KeyEnvironment, generate_key, key_digest
from celeriac.platform.models import ApiKey, utcnow
from celeriac.platform.repository import HasTenant, TenantRepository


class Scope(StrEnum):
    JOBS_WRITE = "jobs:write"
    JOBS_READ = "jobs:read"
    WEBHOOKS_MANAGE = "webhooks:manage"
    KEYS_MANAGE = "keys:manage"
    METRICS_READ = "metrics:read"  # GET /v1/metrics: the tenant's own Prometheus series


ALL_SCOPES = tuple(Scope)


class ApiKeyRepository(TenantRepository[ApiKey]):
    model = ApiKey
    not_found = "API key"


@dataclass(frozen=True)
class IssuedKey:
    api_key: ApiKey
    plaintext: str


def create_api_key(
    session: Session,
    *,
    tenant_id: uuid.UUID,
    pepper: bytes,
    scopes: Sequence[str] = ALL_SCOPES,
    name: str = "",
    expires_at: datetime | None = None,
    environment: KeyEnvironment = KeyEnvironment.LIVE,
    created_by: str = "",
    granted_by: frozenset[str] | None = None,
) -> IssuedKey:
    """Issue a key. ``granted_by`` is the creating key's scopes, when a tenant key creates
    one: a key can never hand out a scope it does not hold."""
    if expires_at is not None and expires_at <= utcnow():
        raise ValidationFailed(
            "expires_at must be in the future",
            errors=[{"pointer": "#/body/expires_at", "detail": "must be in the future"}],
        )
    if granted_by is not None and not set(scopes) <= granted_by:
        raise Forbidden(
            f"this key cannot grant scope(s) it does not hold: "
            f"{', '.join(sorted(set(scopes) - granted_by))}"
        )
    plaintext, parsed = generate_key(environment)
    api_key = ApiKey(
        tenant_id=tenant_id,
        name=name,
        prefix=parsed.prefix,
        last_four=plaintext[-4:],
        digest=key_digest(pepper, plaintext),
        scopes=sorted(str(s) for s in scopes),
        expires_at=expires_at,
        created_by=created_by,
    )
    session.add(api_key)
    session.flush()
    return IssuedKey(api_key=api_key, plaintext=plaintext)


def revoke_api_key(
    session: Session, scope: HasTenant, key_id: uuid.UUID, *, invalidate: Callable[[], None]
) -> ApiKey:
    """Revoke now (idempotent); every API process stops accepting it within seconds."""
    api_key = ApiKeyRepository(session, scope).get(key_id)
    if api_key.revoked_at is None:
        api_key.revoked_at = utcnow()
        session.flush()
        run_after_commit(session, invalidate)
    return api_key


def roll_api_key(
    session: Session,
    scope: HasTenant,
    key_id: uuid.UUID,
    *,
    pepper: bytes,
    old_key_grace: timedelta,
    created_by: str,
    invalidate: Callable[[], None],
) -> IssuedKey:
    """A new key with the same name and scopes; the old one works until the grace ends."""
    old = ApiKeyRepository(session, scope).get(key_id, for_update=True)
    now = utcnow()
    if old.revoked_at is not None or (old.expires_at is not None and old.expires_at <= now):
        raise ValidationFailed("a revoked or expired key cannot be rolled; create a new key")
    issued = create_api_key(
        session,
        tenant_id=old.tenant_id,
        pepper=pepper,
        scopes=old.scopes,
        name=old.name,
        environment=KeyEnvironment(old.prefix.split("_")[1]),
        created_by=created_by,
    )
    grace_end = now + old_key_grace
    old.expires_at = grace_end if old.expires_at is None else min(old.expires_at, grace_end)
    old.replaced_by_id = issued.api_key.id
    session.flush()
    run_after_commit(session, invalidate)
    return issued
