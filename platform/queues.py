"""Pools, task names and queue names: the one module that knows their formats.

Every task is named ``celeriac.<pool>.<name>`` (:class:`TaskName`), and Celery routes it to
its pool's queue by glob (:data:`TASK_ROUTES`, the seed article's routing by name). On the
Redis broker a tenant job's task goes first to its tenant queue ``<pool>.<band>.<tenant>``,
e.g. ``compute.high.acme``: the pool that serves it, the priority band and the tenant's slug
(slugs are ``[a-z0-9-]``, so ``.`` separates unambiguously); the fair dispatcher releases it
into the pool's queue. The API, the workers, the metrics and the Helm chart all build and
parse names here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

from celeriac.platform.models import Priority


class Pool(StrEnum):
    """The three Celery worker pools; each serves only its own queue."""

    ORCHESTRATION = "orchestration"
    DISTRIBUTION = "distribution"
    COMPUTE = "compute"


class TaskName(StrEnum):
    """The name of every task Celeriac registers; decorators, beat, the publishers and the
    webhook events import it from here (a test compares it with the worker app's tasks)."""

    START_JOB = "celeriac.orchestration.start_job"
    CANCEL_JOB = "celeriac.orchestration.cancel_job"
    RECONCILE = "celeriac.orchestration.reconcile"
    RELEASE = "celeriac.orchestration.release"
    DESTROY_DELETED_TENANTS = "celeriac.orchestration.destroy_deleted_tenants"
    RECONCILE_QUOTA_COUNTERS = "celeriac.orchestration.reconcile_quota_counters"
    EXPIRE_JOB_DATA = "celeriac.orchestration.expire_job_data"
    PING_ORCHESTRATION = "celeriac.orchestration.ping"
    FAN_OUT = "celeriac.distribution.fan_out"
    FINALIZE = "celeriac.distribution.finalize"
    DELIVER_WEBHOOK = "celeriac.distribution.deliver_webhook"
    DELIVER_DUE_WEBHOOKS = "celeriac.distribution.deliver_due_webhooks"
    PING_DISTRIBUTION = "celeriac.distribution.ping"
    RUN_TASK = "celeriac.compute.run_task"
    PING_COMPUTE = "celeriac.compute.ping"

    @property
    def pool(self) -> Pool:
        """The pool its name carries (what :data:`TASK_ROUTES` routes it to)."""
        return Pool(self.value.split(".")[1])


# Celery's routing table: a task goes to its pool's queue by the glob its name matches.
TASK_ROUTES: dict[str, dict[str, str]] = {
    f"celeriac.{pool.value}.*": {"queue": pool.value} for pool in Pool
}

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
