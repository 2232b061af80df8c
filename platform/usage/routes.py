"""Usage routes: billing reads records and totals (JWT role billing or admin), a tenant
its own (an API key with scope ``usage:read``); admins record adjustments."""

from __future__ import annotations

import uuid
from typing import Annotated
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Query, Request, Response, status

from celeriac.platform.api.deps import AdminDep, SessionDep, TenantOrBilling
from celeriac.platform.api.schemas import Timestamp
from celeriac.platform.errors import NotFound
from celeriac.platform.keys.service import Scope
from celeriac.platform.usage import service
from celeriac.platform.usage.schemas import (
    AdjustmentCreate,
    Granularity,
    UsagePage,
    UsageRecordOut,
    UsageSummary,
)

router = APIRouter(prefix="/v1/usage", tags=["usage"])
admin_router = APIRouter(prefix="/v1/admin/usage", tags=["usage (admin)"])

CSV = "text/csv"
Metric = Annotated[str | None, Query(max_length=60, description="e.g. compute.seconds")]
# None: billing (every tenant); a tenant id: that tenant's API key.
UsageCaller = Annotated[uuid.UUID | None, Depends(TenantOrBilling(Scope.USAGE_READ))]


def _scoped(caller: uuid.UUID | None, tenant_id: uuid.UUID | None) -> uuid.UUID | None:
    """The tenant filter: a tenant's key reads only its own records (another tenant's id
    is a 404, as everywhere)."""
    if caller is None:
        return tenant_id
    if tenant_id is not None and tenant_id != caller:
        raise NotFound(f"no usage records of tenant {tenant_id}")
    return caller


def _wants_csv(request: Request) -> bool:
    accept = request.headers.get("accept", "")
    return CSV in accept and "application/json" not in accept


@router.get(
    "/records",
    response_model=UsagePage,
    responses={
        200: {
            "content": {CSV: {"schema": {"type": "string"}}},
            "description": "A page of records (CSV with `Accept: text/csv`)",
        }
    },
)
def list_records(
    request: Request,
    response: Response,
    caller: UsageCaller,
    session: SessionDep,
    tenant_id: uuid.UUID | None = None,
    metric: Metric = None,
    occurred_after: Timestamp | None = None,
    occurred_before: Timestamp | None = None,
    cursor: str | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> UsagePage | Response:
    """Usage records, oldest first in (occurred_at, id) order, filtered by tenant, metric
    and time (`occurred_after` inclusive, `occurred_before` exclusive). A tenant's API key
    (scope `usage:read`) sees only its own tenant's records. With
    `Accept: text/csv` the page is CSV with the same columns (`properties` as JSON text);
    the next page's link is in the `Link` header either way."""
    rows, next_cursor = service.list_records(
        session,
        tenant_id=_scoped(caller, tenant_id),
        metric=metric,
        occurred_after=occurred_after,
        occurred_before=occurred_before,
        cursor=cursor,
        limit=limit,
    )
    headers = {}
    if next_cursor is not None:
        params = {k: v for k, v in request.query_params.items() if k != "cursor"}
        link = f"{request.url.path}?{urlencode(params | {'cursor': next_cursor})}"
        headers["Link"] = f'<{link}>; rel="next"'
    if _wants_csv(request):
        return Response(
            service.records_csv(rows), media_type=f"{CSV}; charset=utf-8", headers=headers
        )
    response.headers.update(headers)
    return UsagePage(data=[UsageRecordOut.model_validate(r) for r in rows], next_cursor=next_cursor)


@router.get("/summary", response_model=UsageSummary)
def summary(
    caller: UsageCaller,
    session: SessionDep,
    granularity: Granularity = Granularity.DAY,
    tenant_id: uuid.UUID | None = None,
    metric: Metric = None,
    occurred_after: Timestamp | None = None,
    occurred_before: Timestamp | None = None,
) -> UsageSummary:
    """Totals per tenant, metric and hour, day or month (UTC), adjustments included: each
    total is the sum of the records `GET /v1/usage/records` lists with the same filters.
    A tenant's API key (scope `usage:read`) sees only its own totals."""
    totals = service.summarize(
        session,
        granularity=granularity,
        tenant_id=_scoped(caller, tenant_id),
        metric=metric,
        occurred_after=occurred_after,
        occurred_before=occurred_before,
    )
    return UsageSummary(granularity=granularity, data=totals)


@admin_router.post(
    "/adjustments", status_code=status.HTTP_201_CREATED, response_model=UsageRecordOut
)
def create_adjustment(
    body: AdjustmentCreate, admin: AdminDep, session: SessionDep, response: Response
) -> UsageRecordOut:
    """Correct a usage record: a new record referencing it (`adjusts_id`) whose quantity
    is added to it (negative to reduce); the original is never changed. Audited."""
    record = service.adjust(session, body, actor=admin.subject, actor_role=admin.role.value)
    response.headers["Location"] = f"/v1/usage/records?metric={record.metric}"
    return UsageRecordOut.model_validate(record)
