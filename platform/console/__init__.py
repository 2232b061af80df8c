"""The web console, served by the API process at ``/console`` (docs/adr/0016-web-console.md)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from celeriac.platform.console import web
from celeriac.platform.console.admin import router as admin_router
from celeriac.platform.console.docs import router as docs_router
from celeriac.platform.console.routes import router as tenant_router
from celeriac.platform.errors import ProblemError

Handler = Callable[[Request, Exception], Response | Awaitable[Response]]


def _console_errors(fallback: Handler | None) -> Handler:
    """Under /console an error is a page (a 404 page for another tenant's job); elsewhere
    the API's problem+json handler answers as before."""

    async def handle(request: Request, exc: Exception) -> Response:
        if web.is_console(request):
            return _page_for(request, exc)
        assert fallback is not None
        answer = fallback(request, exc)
        return await answer if isinstance(answer, Awaitable) else answer

    return handle


def _page_for(request: Request, exc: Exception) -> Response:
    if isinstance(exc, web.SignInRequired):
        return web.sign_in_redirect(request, exc.reason)
    if isinstance(exc, web.PageNotFound):
        return web.error_page(request, 404, "Not found", "There is no such page here.")
    if isinstance(exc, ProblemError):
        return web.error_page(request, exc.status, exc.title, exc.detail)
    if isinstance(exc, StarletteHTTPException):
        title = "Not found" if exc.status_code == 404 else "Error"
        detail = "There is no such page here." if exc.status_code == 404 else str(exc.detail)
        return web.error_page(request, exc.status_code, title, detail)
    if isinstance(exc, RequestValidationError):
        return web.error_page(request, 422, "Not valid", "The address or form is not valid.")
    raise exc


def install_console(app: FastAPI) -> None:
    """Mount the console's pages, its static files and the offline /docs on ``app``."""
    app.mount("/console/static", StaticFiles(directory=web.STATIC_DIR), name="console_static")
    for router in (tenant_router, admin_router, docs_router):
        app.include_router(router)
    wrapped: tuple[type[Exception], ...] = (
        ProblemError,
        StarletteHTTPException,
        RequestValidationError,
    )
    for exc_type in wrapped:
        app.add_exception_handler(exc_type, _console_errors(app.exception_handlers.get(exc_type)))
    for own in (web.SignInRequired, web.PageNotFound):
        app.add_exception_handler(own, _console_errors(None))
    app.add_middleware(web.ConsoleSecurityHeaders)


__all__ = ["HTMLResponse", "install_console"]
