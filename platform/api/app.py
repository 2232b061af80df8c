"""The FastAPI control plane. Publishes tasks by name; never imports worker code."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from sqlalchemy import text

from celeriac.platform.db import get_engine
from celeriac.platform.logging import log_context
from celeriac.platform.settings import Settings, get_settings

REQUEST_ID_HEADER = "X-Request-ID"


def _database_ready() -> str | None:
    try:
        with get_engine().connect() as conn:
            conn.execute(text("select 1"))
    except Exception as exc:  # any failure means "not ready"; the message says which
        return f"database: {type(exc).__name__}: {exc}"
    return None


def _broker_ready(settings: Settings) -> str | None:
    from celeriac.platform.broker import broker_connection

    try:
        with broker_connection(settings) as conn:
            conn.ensure_connection(max_retries=1, timeout=2)
    except Exception as exc:
        return f"broker: {type(exc).__name__}: {exc}"
    return None


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    app = FastAPI(
        title="Celeriac",
        version="0.1.0",
        description="Multi-tenant data-processing workflows on Celery.",
    )

    @app.middleware("http")
    async def request_context(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        incoming = request.headers.get(REQUEST_ID_HEADER, "")
        # Accept a caller's id only when it is short and printable; otherwise make one.
        request_id = incoming if 0 < len(incoming) <= 64 and incoming.isprintable() else ""
        request_id = request_id or uuid.uuid4().hex
        with log_context(request_id=request_id):
            response = await call_next(request)
        response.headers[REQUEST_ID_HEADER] = request_id
        return response

    @app.get("/healthz", tags=["health"], summary="The process is up")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"], summary="The database and the broker are reachable")
    def readyz() -> JSONResponse:
        problems = [p for p in (_database_ready(), _broker_ready(settings)) if p]
        if problems:
            return JSONResponse({"status": "unavailable", "problems": problems}, status_code=503)
        return JSONResponse({"status": "ok"})

    return app
