"""Console pages of platform admins (JWT role ``admin``) and billing (``billing``).

They call the admin API's service functions with the signed-in admin as the actor, so every
change is audited as the REST API's is. A tenant session is a 404 here.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Form, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, Response

from celeriac.platform import audit
from celeriac.platform.api.deps import SessionDep, invalidate_auth
from celeriac.platform.console.web import (
    PREFIX,
    AdminPage,
    AdminPageDep,
    BillingPageDep,
    redirect,
    render,
)
from celeriac.platform.db import get_sessionmaker
from celeriac.platform.dispatch import get_dispatcher
from celeriac.platform.errors import ProblemError, ValidationFailed
from celeriac.platform.models import Tenant, utcnow
from celeriac.platform.queues import Pool
from celeriac.platform.quotas import service as quotas
from celeriac.platform.quotas.plans import PLANS
from celeriac.platform.quotas.schemas import QuotaOverrides
from celeriac.platform.tenants import service as tenants
from celeriac.platform.usage import service as usage
from celeriac.platform.usage.schemas import Granularity
from celeriac.platform.webhooks import repository as webhook_repository

router = APIRouter(prefix=PREFIX, include_in_schema=False)


def _actor(page: AdminPage) -> str:
    return page.session.subject


# --- tenants ---------------------------------------------------------------------------


def _tenants_context(session: SessionDep, **extra: Any) -> dict[str, Any]:
    rows, _ = tenants.list_tenants(session, status=None, cursor=None, limit=100)
    return {"tenants": rows, "plans": sorted(PLANS), "nav": "tenants", **extra}


@router.get("/admin/tenants", response_class=HTMLResponse)
def tenants_page(request: Request, page: AdminPageDep, session: SessionDep) -> HTMLResponse:
    return render(request, "admin/tenants.html", _tenants_context(session), state=page.session)


@router.post("/admin/tenants", response_class=HTMLResponse)
def create_tenant(
    request: Request,
    page: AdminPageDep,
    session: SessionDep,
    slug: Annotated[str, Form(max_length=63)],
    name: Annotated[str, Form(max_length=200)],
    plan: Annotated[str, Form()] = "free",
) -> Response:
    try:
        tenants.create_tenant(session, slug=slug, name=name, plan=plan, actor=_actor(page))
        session.commit()
    except ProblemError as exc:
        session.rollback()
        return render(
            request,
            "admin/tenants.html",
            _tenants_context(session, error=exc.detail),
            status_code=exc.status,
            state=page.session,
        )
    return redirect(request, f"{PREFIX}/admin/tenants")


@router.get("/admin/tenants/{tenant_id}/quotas", response_class=HTMLResponse)
def quotas_page(
    request: Request, tenant_id: uuid.UUID, page: AdminPageDep, session: SessionDep
) -> HTMLResponse:
    tenant = tenants.get_tenant(session, tenant_id)
    return render(
        request,
        "admin/quotas.html",
        {"tenant": tenant, "nav": "tenants", "view": quotas.tenant_quotas(session, tenant)},
        state=page.session,
    )


@router.post("/admin/tenants/{tenant_id}/quotas", response_class=HTMLResponse)
async def set_quotas(request: Request, tenant_id: uuid.UUID, page: AdminPageDep) -> Response:
    """Each limit is a number or empty (follow the plan)."""
    form = await request.form()
    values: dict[str, int | None] = {}
    for name in QuotaOverrides.model_fields:
        raw = str(form.get(name) or "").strip()
        if raw and not raw.isdigit():
            raise ValidationFailed(f"{name} must be a whole number or empty (the plan's)")
        values[name] = int(raw) if raw else None

    def save() -> None:
        with get_sessionmaker()() as session, session.begin():
            tenant = tenants.get_tenant(session, tenant_id)
            quotas.set_quotas(
                session,
                tenant,
                QuotaOverrides.model_validate(values),
                actor=_actor(page),
                actor_role=page.session.role,
            )

    await run_in_threadpool(save)
    return redirect(request, f"{PREFIX}/admin/tenants/{tenant_id}/quotas")


# After the quotas routes: /{action} would also match /quotas.
@router.post("/admin/tenants/{tenant_id}/{action}", response_class=HTMLResponse)
def tenant_action(
    request: Request,
    tenant_id: uuid.UUID,
    action: str,
    page: AdminPageDep,
    session: SessionDep,
    confirm: Annotated[str, Form()] = "",
) -> Response:
    """suspend, resume, or delete (the admin types the tenant's slug to confirm)."""
    tenant = tenants.get_tenant(session, tenant_id)
    if action in ("suspend", "resume"):
        status = "suspended" if action == "suspend" else "active"
        tenants.update_tenant(
            session,
            tenant,
            changes={"status": status},
            actor=_actor(page),
            invalidate_auth=invalidate_auth,
        )
    elif action == "delete":
        if confirm != tenant.slug:
            context = _tenants_context(
                session, error=f"type the tenant's slug ({tenant.slug}) to delete it"
            )
            return render(
                request, "admin/tenants.html", context, status_code=422, state=page.session
            )
        tenants.delete_tenant(session, tenant, actor=_actor(page), invalidate_auth=invalidate_auth)
    else:
        raise ValidationFailed(f"unknown action {action!r}")
    session.commit()
    return redirect(request, f"{PREFIX}/admin/tenants")


# --- operations ------------------------------------------------------------------------


def _backlog_context() -> dict[str, Any]:
    dispatcher = get_dispatcher()
    if dispatcher is None:
        return {"fair_dispatch": False, "pools": [], "queues": []}
    backlogs = sorted(dispatcher.tenant_backlogs().items(), key=lambda kv: -kv[1])
    pools = []
    for pool in Pool:
        queued = sum(n for q, n in backlogs if q.pool is pool)
        pools.append(
            {
                "pool": pool.value,
                "queued": queued,
                "ready": dispatcher.ready_depth(pool),
                "held": dispatcher.held(pool),
                "slots": dispatcher.slots(pool),
            }
        )
    top = max([n for _, n in backlogs] or [1])
    queues: list[dict[str, Any]] = [
        {
            "pool": q.pool.value,
            "band": q.band.value,
            "tenant": q.tenant,
            "messages": n,
            "width": round(300 * n / top, 1),
        }
        for q, n in backlogs[:200]
    ]
    return {
        "fair_dispatch": True,
        "pools": pools,
        "queues": queues,
        "hidden": max(0, len(backlogs) - 200),
    }


@router.get("/admin/backlog", response_class=HTMLResponse)
def backlog_page(request: Request, page: AdminPageDep) -> HTMLResponse:
    return render(
        request, "admin/backlog.html", {**_backlog_context(), "nav": "backlog"}, state=page.session
    )


@router.get("/admin/backlog/live", response_class=HTMLResponse)
def backlog_live(request: Request, page: AdminPageDep) -> HTMLResponse:
    return render(request, "fragments/backlog.html", _backlog_context(), state=page.session)


@router.get("/admin/webhooks", response_class=HTMLResponse)
def webhook_health_page(request: Request, page: AdminPageDep, session: SessionDep) -> HTMLResponse:
    rows = webhook_repository.unscoped_health_by_tenant(session)
    return render(
        request, "admin/webhooks.html", {"rows": rows, "nav": "health"}, state=page.session
    )


@router.get("/admin/audit", response_class=HTMLResponse)
def audit_page(
    request: Request, page: AdminPageDep, session: SessionDep, cursor: str | None = None
) -> HTMLResponse:
    rows, next_cursor = audit.list_entries(
        session, tenant_id=None, action=None, cursor=cursor or None, limit=50
    )
    return render(
        request,
        "admin/audit.html",
        {"entries": rows, "next_cursor": next_cursor, "nav": "audit"},
        state=page.session,
    )


# --- billing ---------------------------------------------------------------------------


def _month_start(months_back: int) -> datetime:
    now = utcnow()
    year, month = now.year, now.month - months_back
    while month <= 0:
        month += 12
        year -= 1
    return datetime(year, month, 1, tzinfo=now.tzinfo)


@router.get("/billing", response_class=HTMLResponse)
def billing_page(request: Request, page: BillingPageDep, session: SessionDep) -> HTMLResponse:
    """Usage by tenant and month (the last 12), and the CSV export of the records."""
    totals = usage.summarize(
        session,
        granularity=Granularity.MONTH,
        tenant_id=None,
        metric=None,
        occurred_after=_month_start(11),
        occurred_before=None,
    )
    slugs = dict(session.query(Tenant.id, Tenant.slug).all())
    rows = [
        {
            "tenant": slugs.get(t.tenant_id, str(t.tenant_id)),
            "tenant_id": t.tenant_id,
            "month": t.period_start.strftime("%Y-%m"),
            "metric": t.metric,
            "unit": t.unit,
            "quantity": t.quantity,
            "records": t.records,
        }
        for t in totals
    ]
    return render(request, "billing.html", {"rows": rows, "nav": "billing"}, state=page.session)


@router.get("/billing/records.csv")
def billing_csv(_page: BillingPageDep, session: SessionDep, month: str | None = None) -> Response:
    """The month's usage records (default: this month) as CSV, the API's export columns."""
    try:
        start = (
            datetime.strptime(month, "%Y-%m").replace(tzinfo=utcnow().tzinfo)
            if month
            else (_month_start(0))
        )
    except ValueError:
        raise ValidationFailed("month is YYYY-MM") from None
    end = (start + timedelta(days=32)).replace(day=1)
    records, cursor = usage.list_records(
        session,
        tenant_id=None,
        metric=None,
        occurred_after=start,
        occurred_before=end,
        cursor=None,
        limit=50_000,
    )
    headers = {"Content-Disposition": f'attachment; filename="usage-{start:%Y-%m}.csv"'}
    if cursor is not None:
        headers["X-Truncated"] = "true: more than 50000 records; use GET /v1/usage/records"
    return Response(
        usage.records_csv(records), media_type="text/csv; charset=utf-8", headers=headers
    )


__all__ = ["router"]
