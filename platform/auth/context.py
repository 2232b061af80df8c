"""Who is calling: resolved once per request, passed to every tenant-scoped query."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from celeriac.platform.errors import MissingScopes


@dataclass(frozen=True)
class TenantContext:
    """An authenticated tenant API key. Repositories start every query from it."""

    tenant_id: uuid.UUID
    tenant_slug: str
    key_id: uuid.UUID
    scopes: frozenset[str]
    # The tenant is suspended: its key may read (GET), never write (docs/adr/0015).
    suspended: bool = False

    @property
    def principal(self) -> str:
        return f"api_key:{self.key_id}"

    def require(self, *scopes: str) -> None:
        missing = [s for s in scopes if s not in self.scopes]
        if missing:
            raise MissingScopes(missing)
