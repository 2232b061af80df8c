"""JSON request bodies are checked by :mod:`celeriac.platform.json_input` before FastAPI
reads them with ``json.loads``, which takes ``NaN``, UTF-16 and lone surrogates and fails
with a 500 on deep nesting or a 5,000-digit number (plain ASGI, as the request envelope).

Bodies other than the job submission are at most 1 MiB (the envelope's limit), so the
second parse costs little; the job route parses its own body strictly, once.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from celeriac.platform import json_input
from celeriac.platform.api.problems import problem_response
from celeriac.platform.errors import ProblemError

_BODY_METHODS = {"POST", "PUT", "PATCH"}


def _is_json(scope: Scope) -> bool:
    for name, value in scope["headers"]:
        if name == b"content-type":
            media: str = value.decode("latin-1").split(";", 1)[0].strip().lower()
            return media == "application/json" or media.endswith("+json")
    return False


class StrictJsonBodies:
    def __init__(self, app: ASGIApp, *, skip_paths: set[str]) -> None:
        self.app = app
        self.skip_paths = skip_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope["method"] not in _BODY_METHODS
            or scope["path"] in self.skip_paths
            or not _is_json(scope)
        ):
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        try:
            while True:
                message = await receive()
                if message["type"] != "http.request":
                    break  # the client left; the app will see the disconnect
                chunks.append(message.get("body", b""))
                if not message.get("more_body"):
                    break
            body = b"".join(chunks)
            if body:
                json_input.parse(body)
        except ProblemError as exc:
            response = problem_response(
                Request(scope),
                status=exc.status,
                code=exc.code,
                title=exc.title,
                detail=exc.detail,
                errors=exc.errors,
                headers=exc.headers,
                extra=exc.extra,
            )
            await response(scope, receive, send)
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)
