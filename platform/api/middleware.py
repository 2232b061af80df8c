"""The request envelope, as plain ASGI middleware (BaseHTTPMiddleware costs a task and a
queue per request, which the ingest path can measure).

It gives every request an id (``X-Request-ID``, echoed and put in the log context),
refuses bodies over the limit with 413 before reading them, and refuses bodies whose
media type the API does not accept with 415.
"""

from __future__ import annotations

import json
import logging
import uuid
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from celeriac.platform.api.problems import PROBLEM_JSON, TYPE_BASE
from celeriac.platform.errors import PayloadTooLarge
from celeriac.platform.logging import log_context

logger = logging.getLogger(__name__)

REQUEST_ID_HEADER = "X-Request-ID"
_INTERNAL_ERROR = (
    500,
    "internal-error",
    "something went wrong on our side; quote the request_id when reporting it",
)
SMALL_BODY_LIMIT = 1024 * 1024
_BODY_METHODS = {"POST", "PUT", "PATCH"}
_JSON_TYPES = ("application/json",)
_MULTIPART = "multipart/form-data"
_FORM = "application/x-www-form-urlencoded"


def _media_type(headers: dict[bytes, bytes]) -> str:
    raw = headers.get(b"content-type", b"").decode("latin-1")
    return raw.split(";", 1)[0].strip().lower()


class RequestEnvelope:
    def __init__(
        self,
        app: ASGIApp,
        *,
        max_body_bytes: int,
        multipart_paths: set[str],
        form_prefix: str | None = None,
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.multipart_paths = multipart_paths
        # Under this prefix (the console's pages) HTML forms are accepted too.
        self.form_prefix = form_prefix

    def _limit(self, path: str) -> int:
        return self.max_body_bytes if path in self.multipart_paths else SMALL_BODY_LIMIT

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        incoming = headers.get(REQUEST_ID_HEADER.lower().encode(), b"").decode("latin-1")
        # A caller's id is kept when short and printable; otherwise we make one.
        request_id = incoming if 0 < len(incoming) <= 64 and incoming.isprintable() else ""
        request_id = request_id or uuid.uuid4().hex

        started = False

        async def send_with_id(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                message["headers"] = [
                    *message.get("headers", []),
                    (REQUEST_ID_HEADER.encode(), request_id.encode()),
                ]
            await send(message)

        with log_context(request_id=request_id):
            problem = self._refusal(scope, headers)
            if problem is not None:
                await _send_problem(send_with_id, scope, request_id, problem)
                return
            counted = self._counting(receive, self._limit(scope["path"]))
            try:
                await self.app(scope, counted, send_with_id)
            except Exception:
                # An error no handler answered. Starlette's outermost middleware would
                # answer it outside this envelope, without the request id; answer here.
                if started:
                    raise
                logger.exception("unhandled error", extra={"path": scope["path"]})
                await _send_problem(send_with_id, scope, request_id, _INTERNAL_ERROR)

    def _refusal(self, scope: Scope, headers: dict[bytes, bytes]) -> tuple[int, str, str] | None:
        if scope["method"] not in _BODY_METHODS:
            return None
        length_header = headers.get(b"content-length")
        has_body = b"transfer-encoding" in headers
        limit = self._limit(scope["path"])
        if length_header is not None:
            try:
                length = int(length_header)
            except ValueError:
                return 400, "bad-request", "Content-Length is not a number"
            if length > limit:
                return 413, "payload-too-large", f"the body is {length} bytes; the limit is {limit}"
            has_body = has_body or length > 0
        if not has_body:
            return None
        media_type = _media_type(headers)
        if media_type in _JSON_TYPES or media_type.endswith("+json"):
            return None
        if media_type == _MULTIPART and scope["path"] in self.multipart_paths:
            return None
        if (
            self.form_prefix is not None
            and scope["path"].startswith(self.form_prefix)
            and (media_type in (_FORM, _MULTIPART))
        ):
            return None
        accepted = "application/json" + (
            " or multipart/form-data" if scope["path"] in self.multipart_paths else ""
        )
        return (
            415,
            "unsupported-media-type",
            (f"content type {media_type or '(none)'!r} is not accepted here; send {accepted}"),
        )

    @staticmethod
    def _counting(receive: Receive, limit: int) -> Receive:
        """Count streamed (chunked) bytes too: Content-Length may be absent or wrong."""
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise PayloadTooLarge(f"the body exceeds the limit of {limit} bytes")
            return message

        return counted


async def _send_problem(
    send: Send, scope: Scope, request_id: str, refusal: tuple[int, str, str]
) -> None:
    status, code, detail = refusal
    titles = {
        400: "Bad request",
        413: "Payload too large",
        415: "Unsupported media type",
        500: "Internal server error",
    }
    body: dict[str, Any] = {
        "type": TYPE_BASE + code,
        "title": titles[status],
        "status": status,
        "detail": detail,
        "instance": scope["path"],
        "code": code,
        "request_id": request_id,
    }
    payload = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", PROBLEM_JSON.encode()),
                (b"content-length", str(len(payload)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})
