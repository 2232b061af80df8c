"""Prometheus views with tenants in them, kept apart from the process metrics.

The process metrics (``celeriac.platform.metrics``) never carry a tenant label, so their
series count does not grow with the tenants. Per-tenant numbers are computed at scrape time
from the broker and the database, in two bounded views:

- ``GET /metrics/tenants`` (admin): the top N tenants by backlog (N is
  ``observability.tenant_metrics_top_n``) and one ``other`` bucket for the rest;
- ``GET /v1/metrics`` (a tenant API key with ``metrics:read``): the calling tenant's own
  series only, for the tenant's own Prometheus.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterator
from typing import Annotated

from fastapi import APIRouter, Depends, Response
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from sqlalchemy import select
from sqlalchemy.orm import Session

from celeriac.platform.api.deps import AdminDep, Admit, SessionDep, SettingsDep
from celeriac.platform.auth.context import TenantContext
from celeriac.platform.dispatch import FairDispatcher, get_dispatcher
from celeriac.platform.jobs import repository as jobs
from celeriac.platform.keys.service import Scope
from celeriac.platform.metrics import CONTENT_TYPE, oldest_age, status_class
from celeriac.platform.models import (
    FINAL_JOB_STATES,
    Tenant,
)
from celeriac.platform.queues import BANDS, Pool, TenantQueue
from celeriac.platform.webhooks import repository as webhooks

OTHER = "other"
DURATION_BUCKETS = (0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)

tenant_router = APIRouter(tags=["metrics"])
admin_router = APIRouter(prefix="/metrics", include_in_schema=False)
MetricsReader = Annotated[TenantContext, Depends(Admit(Scope.METRICS_READ).tenant)]


# --- /metrics/tenants ----------------------------------------------------------------------


class TopTenantsCollector(Collector):
    """Backlog, running jobs, oldest age and finished jobs of the top-N tenants by backlog,
    plus ``other`` for everyone else: at most N + 1 values of ``tenant`` per family."""

    def __init__(self, session: Session, dispatcher: FairDispatcher | None, top_n: int) -> None:
        self.session = session
        self.dispatcher = dispatcher
        self.top_n = top_n

    def collect(self) -> Iterator[Metric]:
        now = time.time()
        waiting = self.dispatcher.tenant_backlogs() if self.dispatcher is not None else {}
        per_tenant: Counter[str] = Counter()
        queues_of: defaultdict[str, list[TenantQueue]] = defaultdict(list)
        for queue, count in waiting.items():
            per_tenant[queue.tenant] += count
            queues_of[queue.tenant].append(queue)
        top = [slug for slug, _ in per_tenant.most_common(self.top_n)]
        found = self.session.execute(select(Tenant.slug, Tenant.id).where(Tenant.slug.in_(top)))
        ids = {slug: tenant_id for slug, tenant_id in found}
        label_of = {ids[slug]: slug for slug in top if slug in ids}

        def label(tenant_id: uuid.UUID) -> str:
            return label_of.get(tenant_id, OTHER)

        backlog = GaugeMetricFamily(
            "celeriac_tenant_backlog", "Messages waiting, by tenant (top N).", labels=["tenant"]
        )
        oldest = GaugeMetricFamily(
            "celeriac_tenant_oldest_age_seconds",
            "Age of the tenant's oldest waiting message (top N).",
            labels=["tenant"],
        )
        running = GaugeMetricFamily(
            "celeriac_tenant_running_jobs", "Jobs running, by tenant (top N).", labels=["tenant"]
        )
        finished = CounterMetricFamily(
            "celeriac_tenant_jobs_finished",
            "Jobs that reached a final state, by tenant (top N) and state.",
            labels=["tenant", "state"],
        )
        other_queues = [q for slug, qs in queues_of.items() if slug not in top for q in qs]
        for slug in top:
            backlog.add_metric([slug], per_tenant[slug])
            oldest.add_metric([slug], oldest_age(self.dispatcher, queues_of[slug], now))  # type: ignore[arg-type]
        backlog.add_metric([OTHER], sum(n for s, n in per_tenant.items() if s not in top))
        oldest.add_metric(
            [OTHER],
            oldest_age(self.dispatcher, other_queues, now) if self.dispatcher else 0.0,
        )
        runs: Counter[str] = Counter()
        for tenant_id, count in jobs.unscoped_running_counts(self.session).items():
            runs[label(tenant_id)] += count
        for name in [*top, OTHER]:
            running.add_metric([name], runs[name])
        ends: Counter[tuple[str, str]] = Counter()
        for (tenant_id, state), count in jobs.unscoped_finished_counts(self.session).items():
            ends[(label(tenant_id), state)] += count
        for (name, state), count in sorted(ends.items()):
            finished.add_metric([name, state], count)
        yield from (backlog, oldest, running, finished)


@admin_router.get("/tenants")
def tenant_metrics(_admin: AdminDep, session: SessionDep, settings: SettingsDep) -> Response:
    """Per-tenant series for operators, bounded to the top N tenants by backlog."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(
        TopTenantsCollector(session, get_dispatcher(), settings.observability.tenant_metrics_top_n)
    )
    return Response(generate_latest(registry), media_type=CONTENT_TYPE)


# --- /v1/metrics -------------------------------------------------------------------------


class OwnTenantCollector(Collector):
    """One tenant's own series: backlog per pool and band, running jobs, jobs finished by
    state, a job duration histogram and its webhook attempts by outcome class. Every query
    starts from the tenant's id (its queues from its slug), so no other tenant's number
    can appear."""

    def __init__(
        self, session: Session, dispatcher: FairDispatcher | None, tenant: TenantContext
    ) -> None:
        self.session = session
        self.dispatcher = dispatcher
        self.tenant = tenant

    def collect(self) -> Iterator[Metric]:
        tenant_id = self.tenant.tenant_id
        backlog = GaugeMetricFamily(
            "celeriac_backlog", "Your messages waiting, by pool and band.", labels=["pool", "band"]
        )
        queues = [
            TenantQueue(pool, band, self.tenant.tenant_slug) for pool in Pool for band in BANDS
        ]
        lengths = [0] * len(queues)
        if self.dispatcher is not None:
            with self.dispatcher.client.pipeline(transaction=False) as pipe:
                for queue in queues:
                    pipe.llen(queue.name)
                lengths = [int(n) for n in pipe.execute()]
        for queue, length in zip(queues, lengths, strict=True):
            backlog.add_metric([queue.pool.value, queue.band.value], length)
        yield backlog

        running = GaugeMetricFamily("celeriac_running_jobs", "Your jobs running now.")
        running.add_metric([], jobs.running_count(self.session, tenant_id))
        yield running

        finished = CounterMetricFamily(
            "celeriac_jobs_finished", "Your jobs that reached a final state.", labels=["state"]
        )
        counts = jobs.finished_counts(self.session, tenant_id)
        for state in sorted(FINAL_JOB_STATES):
            finished.add_metric([state.value], counts.get(state.value, 0))
        yield finished
        yield self._durations(tenant_id)

        attempts = CounterMetricFamily(
            "celeriac_webhook_attempts",
            "Deliveries to your webhooks by outcome class.",
            labels=["outcome"],
        )
        classes: Counter[str] = Counter()
        for status, count in webhooks.attempt_status_counts(self.session, tenant_id).items():
            classes["error" if status is None else status_class(int(status))] += int(count)
        for klass, count in sorted(classes.items()):
            attempts.add_metric([klass], count)
        yield attempts

    def _durations(self, tenant_id: uuid.UUID) -> HistogramMetricFamily:
        """Submission to final state of the tenant's ended jobs (buckets counted by the
        database: one row back, however many jobs)."""
        total, seconds, cumulative = jobs.duration_histogram(
            self.session, tenant_id, DURATION_BUCKETS
        )
        buckets = [(str(b), n) for b, n in zip(DURATION_BUCKETS, cumulative, strict=True)]
        family = HistogramMetricFamily(
            "celeriac_job_duration_seconds", "Your jobs' submission to final state."
        )
        family.add_metric([], [*buckets, ("+Inf", total)], seconds)
        return family


@tenant_router.get(
    "/v1/metrics",
    summary="Your own metrics, in Prometheus text format",
    responses={200: {"content": {CONTENT_TYPE: {}}, "description": "Prometheus text"}},
)
def own_metrics(tenant: MetricsReader, session: SessionDep) -> Response:
    """Your backlog per band, running jobs, jobs finished by state, job durations and
    webhook delivery outcomes, for your own Prometheus (an API key with ``metrics:read``)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(OwnTenantCollector(session, get_dispatcher(), tenant))
    return Response(generate_latest(registry), media_type=CONTENT_TYPE)
