"""Request dependencies: the session, the settings, who is calling and their admission.

``SessionDep`` commits when the route function returns (``scope="function"``: before the
response is sent, so a 2xx means the rows exist) and rolls back on any error.

Who is calling and whether they are let in are two steps: :class:`Authenticator` (the API
key, then the route's scopes) and the admission (:mod:`celeriac.platform.api.admission`:
rate limit, Idempotency-Key, monthly job reservation). A tenant route names both with
:class:`Admit`, which authenticates first, so a 401 or 403 consumes nothing. Admins are
not rate limited: :class:`AdminAdmit` verifies the JWT and the role, then reserves the
Idempotency-Key.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from functools import lru_cache, partial
from typing import Annotated

from fastapi import Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from celeriac.platform.api.admission import Admission, admit
from celeriac.platform.api.idempotency import reserve
from celeriac.platform.auth.api_keys import ApiKeyAuthenticator
from celeriac.platform.auth.context import TenantContext
from celeriac.platform.auth.invalidation import FileGeneration, Generation, RedisGeneration
from celeriac.platform.auth.jwt import AdminPrincipal, InvalidToken, Role, verify_token
from celeriac.platform.db import get_engine, get_sessionmaker
from celeriac.platform.errors import Forbidden, TenantSuspended, Unauthorized
from celeriac.platform.logging import bind_context
from celeriac.platform.redis_client import get_redis
from celeriac.platform.settings import Settings, get_settings

API_KEY_PREFIX = "ck_"  # every tenant API key (celeriac.platform.keys.tokens); never a JWT's


def get_session() -> Iterator[Session]:
    with get_sessionmaker()() as session:
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise


SessionDep = Annotated[Session, Depends(get_session, scope="function")]
SettingsDep = Annotated[Settings, Depends(get_settings)]


@lru_cache(maxsize=1)
def auth_generation() -> Generation:
    """The shared cache-invalidation counter: Redis when configured, else a file in var/."""
    client = get_redis()
    if client is not None:
        return RedisGeneration(client)
    return FileGeneration(get_settings().var_dir / "auth-generation")


@lru_cache(maxsize=1)
def api_key_authenticator() -> ApiKeyAuthenticator:
    settings = get_settings()
    return ApiKeyAuthenticator(
        get_engine(),
        settings.api_key_pepper(),
        auth_generation(),
        settings.api.auth_cache_poll_seconds,
    )


def invalidate_auth() -> None:
    """After a revocation, suspension or deletion: every process drops its auth cache
    (this one now, the others within ``api.auth_cache_poll_seconds``)."""
    api_key_authenticator().invalidate()


_tenant_bearer = HTTPBearer(
    auto_error=False,
    scheme_name="ApiKey",
    description="A tenant API key: `Authorization: Bearer ck_live_...`",
)
_admin_bearer = HTTPBearer(
    auto_error=False,
    scheme_name="AdminJWT",
    description="A JWT with role `admin` (or `billing` for usage reads).",
)


def _token(credentials: HTTPAuthorizationCredentials | None) -> str:
    if credentials is None or credentials.scheme.lower() != "bearer" or not credentials.credentials:
        raise Unauthorized(
            "send a bearer token in the Authorization header", error="invalid_request"
        )
    return credentials.credentials


class Authenticator:
    """Dependency resolving the calling tenant from its API key and checking scopes; it
    consumes nothing (see :class:`Admit` for the rate limit and quotas).

    ``while_suspended`` marks a write that only takes access away (revoking a key): a
    suspended tenant may still do it, as it may read."""

    def __init__(self, *scopes: str, while_suspended: bool = False) -> None:
        self.scopes = scopes
        self.while_suspended = while_suspended

    async def __call__(
        self,
        request: Request,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_tenant_bearer)],
    ) -> TenantContext:
        # A cached key is checked on the event loop; a lookup that may query the database
        # runs in the thread pool. Binding the log context here, in the request's own task,
        # makes it visible to the route function.
        token = _token(credentials)
        authenticator = api_key_authenticator()
        context = authenticator.authenticate_cached(token, allow_suspended=True)
        if context is None:
            context = await run_in_threadpool(
                partial(authenticator.authenticate, token, allow_suspended=True)
            )
        bind_context(tenant_id=context.tenant_id)
        if not self.while_suspended:
            refuse_if_suspended(request, context)
        context.require(*self.scopes)
        return context


# What a suspended tenant's key may still do: read, so that it can see why its work is
# held (waiting_reason) and what it has; every other method changes something.
_READ_METHODS = frozenset({"GET", "HEAD"})


def refuse_if_suspended(request: Request, context: TenantContext) -> None:
    """403 ``tenant-suspended`` for a suspended tenant's write (docs/adr/0015)."""
    if context.suspended and request.method not in _READ_METHODS:
        raise TenantSuspended(
            "the tenant is suspended: its keys may read (jobs, events, results, usage) and "
            "revoke keys, but not change anything else; contact your administrator"
        )


class Admit:
    """Dependency for a tenant route: :class:`Authenticator` with ``scopes``, then
    :func:`~celeriac.platform.api.admission.admit` (``counts_job`` for a job submission,
    which reserves the job against the monthly quota). ``Depends(Admit(...))`` gives the
    :class:`~celeriac.platform.api.admission.Admission`; ``Depends(Admit(...).tenant)``
    only its tenant, for routes that need no more of it."""

    def __init__(
        self, *scopes: str, counts_job: bool = False, while_suspended: bool = False
    ) -> None:
        self.authenticator = Authenticator(*scopes, while_suspended=while_suspended)
        self.counts_job = counts_job

    async def __call__(
        self,
        request: Request,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_tenant_bearer)],
    ) -> Admission:
        context = await self.authenticator(request, credentials)
        return await admit(request, context, counts_job=self.counts_job)

    async def tenant(
        self,
        request: Request,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_tenant_bearer)],
    ) -> TenantContext:
        return (await self(request, credentials)).ctx


class AdminAuthenticator:
    """Dependency verifying an admin/billing JWT and the roles allowed on the route."""

    def __init__(self, *roles: Role) -> None:
        self.roles = roles

    async def __call__(
        self,
        settings: SettingsDep,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_admin_bearer)],
    ) -> AdminPrincipal:
        try:
            principal = verify_token(settings, _token(credentials))
        except InvalidToken:
            raise Unauthorized("the bearer token is not a valid admin token") from None
        if principal.role not in self.roles:
            raise Forbidden(f"role {principal.role.value!r} may not call this route")
        return principal


class AdminAdmit:
    """Dependency for an admin route: :class:`AdminAuthenticator` with ``roles``, then the
    request's Idempotency-Key (admins have no rate limit or quota)."""

    def __init__(self, *roles: Role) -> None:
        self.authenticator = AdminAuthenticator(*roles)

    async def __call__(
        self,
        request: Request,
        settings: SettingsDep,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_admin_bearer)],
    ) -> AdminPrincipal:
        principal = await self.authenticator(settings, credentials)
        await reserve(request, f"admin:{principal.subject}", None)
        return principal


AdminDep = Annotated[AdminPrincipal, Depends(AdminAdmit(Role.ADMIN))]
BillingDep = Annotated[AdminPrincipal, Depends(AdminAdmit(Role.ADMIN, Role.BILLING))]


class TenantOrBilling:
    """Dependency for routes both billing and tenants read (usage): a JWT with role
    ``admin`` or ``billing`` sees every tenant (None), an API key with ``scopes`` only its
    own tenant (its id). Both security schemes appear in the OpenAPI document."""

    def __init__(self, *scopes: str) -> None:
        self.tenant = Admit(*scopes)
        self.billing = AdminAdmit(Role.ADMIN, Role.BILLING)

    async def __call__(
        self,
        request: Request,
        settings: SettingsDep,
        key: Annotated[HTTPAuthorizationCredentials | None, Depends(_tenant_bearer)],
        token: Annotated[HTTPAuthorizationCredentials | None, Depends(_admin_bearer)],
    ) -> uuid.UUID | None:
        if key is not None and key.credentials.startswith(API_KEY_PREFIX):
            return (await self.tenant(request, key)).ctx.tenant_id
        await self.billing(request, settings, token)
        return None
