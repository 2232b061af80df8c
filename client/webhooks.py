"""Verifying Celeriac's webhook deliveries on the receiving side.

Deliveries follow Standard Webhooks (https://www.standardwebhooks.com): headers
``webhook-id``, ``webhook-timestamp`` and ``webhook-signature`` (``v1,<base64>``, several
space-separated while a rotated secret overlaps). Verify the **raw** request body: parsing
the JSON and serialising it again changes the bytes and the signature no longer matches.

In FastAPI::

    from fastapi import FastAPI, HTTPException, Request
    from celeriac.client.webhooks import InvalidSignature, verify

    app = FastAPI()
    SECRET = "whsec_..."  # shown once when the target was created or its secret rotated

    @app.post("/celeriac-events")
    async def receive(request: Request) -> dict[str, str]:
        raw = await request.body()  # the bytes as sent, not request.json()
        try:
            event = verify(SECRET, request.headers, raw)
        except InvalidSignature as exc:
            raise HTTPException(400, str(exc)) from None
        # event["webhook-id"] is the same on every attempt: use it to drop repeats.
        return {"received": event["type"]}

The standard's reference library (``standardwebhooks``) does the same; this module is the
few lines it takes, so that a receiver needs nothing but the standard library.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import time
from collections.abc import Mapping
from typing import Any

SECRET_PREFIX = "whsec_"  # noqa: S105 (a prefix, not a secret)


class InvalidSignature(ValueError):
    """The delivery is not authentic, or too old or too new to be trusted."""


def verify(
    secret: str,
    headers: Mapping[str, str],
    raw_body: bytes,
    tolerance: int = 300,
    *,
    now: float | None = None,
) -> dict[str, Any]:
    """The event (its JSON, plus ``webhook-id``) if one of the signatures is valid for
    ``secret`` and the timestamp is within ``tolerance`` seconds of now; otherwise
    :class:`InvalidSignature` saying why. Header names are matched case-insensitively."""
    lowered = {k.lower(): v for k, v in headers.items()}
    message_id = lowered.get("webhook-id")
    timestamp = lowered.get("webhook-timestamp")
    signatures = lowered.get("webhook-signature")
    if not message_id or not timestamp or not signatures:
        raise InvalidSignature("missing webhook-id, webhook-timestamp or webhook-signature header")
    try:
        sent_at = int(timestamp)
    except ValueError:
        raise InvalidSignature("webhook-timestamp is not a number of seconds") from None
    current = time.time() if now is None else now
    if abs(current - sent_at) > tolerance:
        raise InvalidSignature(
            f"webhook-timestamp is {int(current - sent_at)} s from now (tolerance {tolerance} s)"
        )
    key = _key(secret)
    signed = f"{message_id}.{sent_at}.".encode() + raw_body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest())
    for candidate in signatures.split():
        version, _, value = candidate.partition(",")
        if version == "v1" and hmac.compare_digest(value.encode(), expected):
            event: dict[str, Any] = json.loads(raw_body)
            event["webhook-id"] = message_id
            return event
    raise InvalidSignature("no signature matches this secret and body (verify the raw body)")


def _key(secret: str) -> bytes:
    try:
        return base64.b64decode(secret.removeprefix(SECRET_PREFIX), validate=True)
    except binascii.Error:
        raise InvalidSignature("the secret is not a whsec_ secret") from None
