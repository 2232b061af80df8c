"""A webhook message's payload, stored encrypted under the tenant's key.

A payload carries what the tenant sent with its job (``metadata``), so it is kept like a
task's error details (``platform/jobs/task_errors.py``): ``webhook_messages.sealed_payload``
holds the exact body sent, encrypted with the tenant's data key and the message id bound
as encryption context; ``webhook_messages.payload`` stays empty (rows written before
migration 0012 keep their clear payload). Deleting the tenant destroys its key, and with
it every stored payload.

:func:`seal` is called where a message is written; :func:`body` where it is sent (the
same bytes on every attempt, so every signature is over the same body); :func:`reveal`
where the tenant reads its events.
"""

from __future__ import annotations

import json
from typing import Any

from celeriac.platform.models import WebhookMessage
from celeriac.platform.tenant_data import envelope


def _context(message_id: str) -> dict[str, str]:
    return {"purpose": "webhook-message", "message_id": message_id}


def encode(payload: dict[str, Any]) -> bytes:
    """The body sent: compact JSON."""
    return json.dumps(payload, separators=(",", ":")).encode()


def seal(tenant_id: str, message_id: str, payload: dict[str, Any]) -> bytes:
    """The stored form of ``payload``."""
    return envelope().encrypt(tenant_id, encode(payload), _context(message_id))


def body(message: WebhookMessage) -> bytes:
    """The bytes to send (raises CryptoError when the tenant's key is destroyed)."""
    if message.sealed_payload is None:  # written before migration 0012
        return encode(message.payload or {})
    return envelope().decrypt(str(message.tenant_id), message.sealed_payload, _context(message.id))


def reveal(message: WebhookMessage) -> dict[str, Any]:
    """The payload, for the tenant's own view of its events."""
    decoded: dict[str, Any] = json.loads(body(message))
    return decoded
