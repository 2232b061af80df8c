"""What every console page shares: templates, security headers, who is signed in, CSRF.

Pages are rendered on the server (Jinja2) and enhanced with htmx; see
docs/adr/0016-web-console.md. The console calls the same service functions as the REST
API with the same :class:`TenantContext`, so tenant scoping is the API's own.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from celeriac.platform.api.deps import api_key_authenticator
from celeriac.platform.auth.context import TenantContext
from celeriac.platform.auth.jwt import Role
from celeriac.platform.console import sessions
from celeriac.platform.errors import ProblemError
from celeriac.platform.settings import get_settings

HERE = Path(__file__).resolve().parent
STATIC_DIR = HERE / "static"
PREFIX = "/console"
COOKIE = "celeriac_console"
# __Host- binds the cookie to this origin (no Domain, Path=/, Secure): only over https.
SECURE_COOKIE = "__Host-celeriac_console"
CSRF_HEADER = "x-csrf-token"
CSRF_FIELD = "csrf_token"

# No inline script or style anywhere: every script and stylesheet is a file served here.
CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "font-src 'self'",
        "connect-src 'self'",
        "form-action 'self'",
        "frame-ancestors 'none'",
        "base-uri 'none'",
    ]
)
SECURITY_HEADERS = {
    "content-security-policy": CONTENT_SECURITY_POLICY,
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
    # not no-referrer: with it Chromium sends "Origin: null" on same-origin form posts.
    "referrer-policy": "same-origin",
    "cross-origin-opener-policy": "same-origin",
    "permissions-policy": "camera=(), microphone=(), geolocation=()",
}
_SECURED_PREFIXES = (PREFIX, "/docs", "/redoc")

templates = Jinja2Templates(directory=str(HERE / "templates"))


@lru_cache(maxsize=64)
def static_url(path: str) -> str:
    """A static file's path with its content hash, so that a browser may cache it and
    still gets the new file after an upgrade (relative: right behind any proxy)."""
    digest = hashlib.sha256((STATIC_DIR / path).read_bytes()).hexdigest()[:12]
    return f"{PREFIX}/static/{path}?v={digest}"


templates.env.globals["static"] = static_url


class ConsoleSecurityHeaders:
    """Adds the CSP and framing headers to console and docs answers (plain ASGI, as the
    API's other middleware), and keeps pages out of shared caches."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or not path.startswith(_SECURED_PREFIXES):
            await self.app(scope, receive, send)
            return
        static = path.startswith(f"{PREFIX}/static/")

        async def send_secured(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in SECURITY_HEADERS.items():
                    headers.setdefault(name, value)
                if not static:
                    headers["cache-control"] = "no-store"
            await send(message)

        await self.app(scope, receive, send_secured)


def is_loopback(request: Request) -> bool:
    host = (request.url.hostname or "").strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def cookie_name(request: Request) -> str:
    return COOKIE if is_loopback(request) else SECURE_COOKIE


def set_session_cookie(response: Response, request: Request, session_id: str) -> None:
    """HttpOnly, SameSite=Strict, Secure except on loopback (http://127.0.0.1 in `celeriac
    up`); a session cookie (no Max-Age): the server decides when it ends."""
    response.set_cookie(
        cookie_name(request),
        session_id,
        httponly=True,
        samesite="strict",
        secure=not is_loopback(request),
        path="/",
    )


def clear_session_cookie(response: Response, request: Request) -> None:
    response.delete_cookie(
        cookie_name(request),
        path="/",
        httponly=True,
        samesite="strict",
        secure=not is_loopback(request),
    )


class SignInRequired(Exception):
    """No live session: the page answers with the sign-in page (``reason`` says why)."""

    def __init__(self, reason: str = "") -> None:
        super().__init__(reason)
        self.reason = reason


class PageNotFound(Exception):
    """A page the signed-in principal may not see: a 404 page, as the API's 404."""


@dataclass(frozen=True)
class TenantPage:
    """A signed-in tenant: the API's own tenant context plus the session."""

    ctx: TenantContext
    session: sessions.SessionState
    session_id: str


@dataclass(frozen=True)
class AdminPage:
    session: sessions.SessionState
    session_id: str

    @property
    def role(self) -> Role:
        return Role(self.session.role)


def _check_csrf(request: Request, state: sessions.SessionState, form_token: str | None) -> None:
    """State-changing requests carry the session's CSRF token (a form field, or a header
    that htmx sends for every request from ``hx-headers`` on <body>)."""
    presented = request.headers.get(CSRF_HEADER) or form_token or ""
    if not hmac.compare_digest(presented.encode(), state.csrf.encode()):
        raise CsrfRejected("the form has expired or did not come from this console; reload")


class CsrfRejected(ProblemError):
    status = 403
    code = "csrf-rejected"
    title = "Forbidden"


def check_origin(request: Request) -> None:
    """A cross-site POST is refused before anything else (sign-in included, which has no
    session yet): the browser's Origin must be this server's."""
    fetch_site = request.headers.get("sec-fetch-site")
    if fetch_site is not None:  # browsers of the last years send it on every request
        if fetch_site != "same-origin":
            raise CsrfRejected("cross-site requests are not accepted")
        return
    origin = request.headers.get("origin")
    if origin is not None and origin != f"{request.url.scheme}://{request.url.netloc}":
        raise CsrfRejected("cross-site requests are not accepted")


async def _state(request: Request) -> tuple[sessions.SessionState, str]:
    session_id = request.cookies.get(cookie_name(request))
    state = await run_in_threadpool(sessions.resolve, session_id)
    if state is None or session_id is None:
        raise SignInRequired("expired" if session_id else "")
    if request.method not in ("GET", "HEAD"):
        check_origin(request)
        form_token = None
        if request.headers.get(CSRF_HEADER) is None:
            form = await request.form()
            value = form.get(CSRF_FIELD)
            form_token = value if isinstance(value, str) else None
        _check_csrf(request, state, form_token)
    return state, session_id


def _tenant_context(state: sessions.SessionState) -> TenantContext:
    try:
        return api_key_authenticator().authenticate_digest(state.key_digest)
    except ProblemError as exc:
        if exc.status not in (401, 403):
            raise  # the database is down, say: a 503 page, the session stays
        raise SessionEnded("ended") from exc  # revoked, expired, tenant suspended, deleted


class SessionEnded(SignInRequired):
    """The session's key or tenant stopped being valid: the session is deleted."""


async def tenant_page(request: Request) -> TenantPage:
    state, session_id = await _state(request)
    if state.kind != "tenant":
        raise PageNotFound()
    try:
        ctx = await run_in_threadpool(_tenant_context, state)
    except SessionEnded:
        await run_in_threadpool(sessions.end, session_id)
        raise
    request.state.tenant = ctx
    return TenantPage(ctx=ctx, session=state, session_id=session_id)


def still_signed_in(session_id: str) -> bool:
    """Whether a tenant session is still live (its key valid, its tenant active), ending
    it when not: what a long-lived answer (the live event stream) checks as it goes."""
    state = sessions.resolve(session_id)
    if state is None or state.kind != "tenant":
        return False
    try:
        _tenant_context(state)
    except SessionEnded:
        sessions.end(session_id)
        return False
    except ProblemError:
        return True  # not an answer about the key (a 503): checked again in a second
    return True


class _AdminGate:
    def __init__(self, *roles: Role) -> None:
        self.roles = {r.value for r in roles}

    async def __call__(self, request: Request) -> AdminPage:
        state, session_id = await _state(request)
        if state.kind != "admin" or state.role not in self.roles:
            raise PageNotFound()
        return AdminPage(session=state, session_id=session_id)


TenantDep = Annotated[TenantPage, Depends(tenant_page)]
AdminPageDep = Annotated[AdminPage, Depends(_AdminGate(Role.ADMIN))]
BillingPageDep = Annotated[AdminPage, Depends(_AdminGate(Role.ADMIN, Role.BILLING))]


def render(
    request: Request,
    template: str,
    context: dict[str, Any],
    *,
    status_code: int = 200,
    state: sessions.SessionState | None = None,
) -> HTMLResponse:
    """A page or fragment; every page gets the session (for the CSRF token and the menu)."""
    values = {"session": state, "poll_seconds": get_settings().console.poll_seconds, **context}
    return templates.TemplateResponse(request, template, values, status_code=status_code)


def redirect(request: Request, url: str) -> Response:
    """A redirect that htmx follows as a whole-page navigation (HX-Redirect)."""
    if request.headers.get("hx-request"):
        return Response(status_code=204, headers={"HX-Redirect": url})
    return RedirectResponse(url, status_code=303)


def sign_in_redirect(request: Request, reason: str) -> Response:
    response = redirect(request, f"{PREFIX}/sign-in" + (f"?ended={reason}" if reason else ""))
    clear_session_cookie(response, request)
    return response


def is_console(request: Request) -> bool:
    return request.url.path == PREFIX or request.url.path.startswith(f"{PREFIX}/")


def error_page(request: Request, status: int, title: str, detail: str) -> HTMLResponse:
    """A console error as a page (the API's problem+json is for programs)."""
    template = "fragments/error.html" if request.headers.get("hx-request") else "error.html"
    response = render(
        request, template, {"status": status, "title": title, "detail": detail}, status_code=status
    )
    if request.headers.get("hx-request"):
        # htmx swaps only 2xx answers by default: retarget the error into the page's
        # message area so that the person sees it.
        response.status_code = 200
        response.headers["HX-Retarget"] = "#flash"
        response.headers["HX-Reswap"] = "innerHTML"
    return response
