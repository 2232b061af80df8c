"""Queue names: the one module that knows their format.

A queue name is ``<pool>.<band>.<tenant>``, e.g. ``compute.high.acme``: the pool that
serves it, the priority band and the tenant's slug (slugs are ``[a-z0-9-]``, so ``.``
separates unambiguously). The API, the workers, the metrics and the Helm chart all build
and parse names here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from celeriac.platform.models import Priority
from celeriac.platform.settings import Pool

BANDS: tuple[Priority, ...] = (Priority.HIGH, Priority.NORMAL, Priority.LOW)
_NAME = re.compile(
    r"^(?P<pool>orchestration|distribution|compute)\.(?P<band>high|normal|low)\."
    r"(?P<tenant>[a-z0-9](?:[a-z0-9-]{1,38})[a-z0-9])$"
)


@dataclass(frozen=True, order=True)
class TenantQueue:
    pool: Pool
    band: Priority
    tenant: str

    @property
    def name(self) -> str:
        return f"{self.pool.value}.{self.band.value}.{self.tenant}"

    def __str__(self) -> str:
        return self.name


def queue_for(pool: Pool, band: Priority | str, tenant_slug: str) -> TenantQueue:
    queue = TenantQueue(pool, Priority(band), tenant_slug)
    if _NAME.match(queue.name) is None:
        raise ValueError(f"{tenant_slug!r} is not a valid tenant slug for a queue name")
    return queue


def parse_queue(name: str) -> TenantQueue | None:
    """The parts of a tenant queue name, or None for any other queue."""
    match = _NAME.match(name)
    if match is None:
        return None
    return TenantQueue(Pool(match["pool"]), Priority(match["band"]), match["tenant"])


def tenant_queues(pool: Pool, tenant_slug: str) -> list[TenantQueue]:
    """A tenant's queues of one pool, highest band first."""
    return [queue_for(pool, band, tenant_slug) for band in BANDS]
