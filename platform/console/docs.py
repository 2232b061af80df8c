"""``/docs`` without the internet: Swagger UI from the vendored copy, started by a script
file (FastAPI's own page loads it from a CDN and starts it with an inline script, which the
console's Content-Security-Policy forbids)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from celeriac.platform.console.web import templates

router = APIRouter(include_in_schema=False)


@router.get("/docs", response_class=HTMLResponse)
def swagger_ui(request: Request) -> HTMLResponse:
    return templates.TemplateResponse(request, "docs.html", {"openapi_url": "/openapi.json"})
