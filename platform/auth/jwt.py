"""The one place that mints and verifies admin and billing JWTs (python-jose).

The algorithm is pinned per key: a token is verified only with the algorithm configured
for the key it names, so ``alg: none`` or an HS256 token signed with an RSA public key
never verifies.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from jose import JWTError, jwt

from celeriac.platform.settings import Settings

HS256 = "HS256"
REQUIRED_CLAIMS = ("exp", "iat", "iss", "aud", "sub")


class Role(StrEnum):
    ADMIN = "admin"
    BILLING = "billing"


class InvalidToken(Exception):
    """The token is not one this platform issued, or no longer valid."""


@dataclass(frozen=True)
class AdminPrincipal:
    subject: str
    role: Role


def mint_token(settings: Settings, subject: str, role: Role, ttl_seconds: int = 3600) -> str:
    """An HS256 token for ``subject`` with ``role``, valid for ``ttl_seconds``."""
    now = int(time.time())
    claims = {
        "sub": subject,
        "role": role.value,
        "iss": settings.auth.jwt_issuer,
        "aud": settings.auth.jwt_audience,
        "iat": now,
        "nbf": now,
        "exp": now + ttl_seconds,
        "jti": uuid.uuid4().hex,
    }
    return jwt.encode(claims, settings.jwt_secret(), algorithm=HS256)


def verify_token(settings: Settings, token: str) -> AdminPrincipal:
    """The principal a valid token names, or :class:`InvalidToken`."""
    try:
        claims: dict[str, Any] = jwt.decode(
            token,
            settings.jwt_secret(),
            algorithms=[HS256],
            audience=settings.auth.jwt_audience,
            issuer=settings.auth.jwt_issuer,
            options={"require_" + claim: True for claim in REQUIRED_CLAIMS}
            | {"leeway": settings.auth.jwt_leeway_seconds},
        )
    except JWTError as exc:
        raise InvalidToken(str(exc)) from None
    try:
        role = Role(str(claims.get("role")))
    except ValueError:
        raise InvalidToken("unknown role") from None
    return AdminPrincipal(subject=str(claims["sub"]), role=role)
