"""Creating API keys; the plaintext leaves this module once, in the return value."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from sqlalchemy.orm import Session

from celeriac.platform.keys.tokens import KeyEnvironment, generate_key, key_digest
from celeriac.platform.models import ApiKey


class Scope(StrEnum):
    JOBS_WRITE = "jobs:write"
    JOBS_READ = "jobs:read"
    WEBHOOKS_MANAGE = "webhooks:manage"
    KEYS_MANAGE = "keys:manage"


ALL_SCOPES = tuple(Scope)


@dataclass(frozen=True)
class IssuedKey:
    api_key: ApiKey
    plaintext: str


def create_api_key(
    session: Session,
    *,
    tenant_id: uuid.UUID,
    pepper: bytes,
    scopes: tuple[Scope, ...] = ALL_SCOPES,
    name: str = "",
    expires_at: datetime | None = None,
    environment: KeyEnvironment = KeyEnvironment.LIVE,
    created_by: str = "",
) -> IssuedKey:
    plaintext, parsed = generate_key(environment)
    api_key = ApiKey(
        tenant_id=tenant_id,
        name=name,
        prefix=parsed.prefix,
        last_four=plaintext[-4:],
        digest=key_digest(pepper, plaintext),
        scopes=[s.value for s in scopes],
        expires_at=expires_at,
        created_by=created_by,
    )
    session.add(api_key)
    session.flush()
    return IssuedKey(api_key=api_key, plaintext=plaintext)
