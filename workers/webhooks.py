"""Sending webhook deliveries (distribution pool): Standard Webhooks signatures, one HTTP
attempt per task, every attempt recorded, retries scheduled in the database.

A delivery is claimed with a compare-and-set that pushes its due time a lease ahead, so a
duplicate message (beat's re-publish, a redelivery) finds nothing to do while an attempt is
in flight, and a delivery whose worker died becomes due again when the lease ends. Once an
attempt got a 2xx the delivery is ``succeeded`` and no automatic attempt follows.

The destination is checked again at delivery time (DNS may have changed since the target was
registered) and the connection goes to the address just checked: the URL carries the IP,
the ``Host`` header and TLS SNI carry the name, so the certificate is still verified for the
name and no second resolution can slip in another address.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import logging
import random
import ssl
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from email.utils import parsedate_to_datetime
from ipaddress import IPv6Address

import certifi
import httpx
from sqlalchemy.orm import Session

from celeriac.platform import metrics
from celeriac.platform.crypto.errors import KeyUnavailable
from celeriac.platform.db import transaction
from celeriac.platform.models import (
    AttemptTrigger,
    DeliveryState,
    Priority,
    TargetState,
    WebhookAttempt,
    WebhookTarget,
    utcnow,
)
from celeriac.platform.redis_client import get_redis
from celeriac.platform.settings import get_settings
from celeriac.platform.tasks import default_publisher
from celeriac.platform.usage.metrics import insert_usage, webhook_delivered_row
from celeriac.platform.webhooks import events, payloads, repository
from celeriac.platform.webhooks.destinations import (
    Resolver,
    UnsafeDestination,
    check_destination,
    parse_allowed_networks,
    resolve_host,
)
from celeriac.platform.webhooks.service import EventType, signing_secrets

logger = logging.getLogger(__name__)

BODY_KEPT_BYTES = 8 * 1024
USER_AGENT = "Celeriac-Webhooks/1"


def lease() -> timedelta:
    """How long a claimed attempt may take before the delivery is due again."""
    return timedelta(seconds=get_settings().webhooks.timeout_seconds * 2 + 30)


@dataclass(frozen=True)
class Claimed:
    delivery_id: uuid.UUID
    tenant_id: uuid.UUID
    target_id: uuid.UUID
    message_id: str
    url: str
    body: bytes
    secrets: tuple[bytes, ...]
    per_second: float
    written_at: datetime | None = None  # the event's creation (delivery latency metric)


@dataclass(frozen=True)
class Response:
    status_code: int | None = None
    body: str | None = None
    error: str | None = None
    duration_ms: int = 0
    retry_after: float | None = None

    @property
    def succeeded(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


def deliver(
    delivery_id: str,
    trigger: AttemptTrigger = AttemptTrigger.SCHEDULED,
    resolve: Resolver = resolve_host,
) -> DeliveryState | None:
    """One attempt of a due delivery; returns its state after it, or None when there was
    nothing to do (not due, already sent, being sent)."""
    claimed = _claim(uuid.UUID(delivery_id))
    if claimed is None:
        return None
    if not _within_rate(claimed):
        _postpone(claimed, seconds=1.0)
        return DeliveryState.PENDING
    response = send(claimed, resolve)
    state = _record(claimed, response, trigger)
    metrics.webhook_attempted(outcome_class(response))
    scheduled = trigger is AttemptTrigger.SCHEDULED
    if response.succeeded and scheduled and claimed.written_at is not None:
        metrics.webhook_delivered(metrics.seconds_between(claimed.written_at, utcnow()))
    return state


def outcome_class(response: Response) -> str:
    """The attempt's outcome for metrics: the status class, or why there was none."""
    if response.status_code is not None:
        return metrics.status_class(response.status_code)
    error = response.error or ""
    if error.startswith("destination refused"):
        return "refused"
    return "timeout" if error.startswith("no answer within") else "network"


def _claim(delivery_id: uuid.UUID) -> Claimed | None:
    now = utcnow()
    with transaction() as session:
        claimed = repository.claim_delivery(session, delivery_id, lease())
        if claimed is None:
            return None
        delivery, target, message = claimed
        body: bytes | None = None
        if target.state is TargetState.ENABLED:
            try:
                body = payloads.body(message)
            except KeyUnavailable:  # a deleted tenant's key is destroyed: nothing to send
                logger.warning("webhook message %s is unreadable: its key is gone", message.id)
        if body is None:
            repository.set_delivery(
                session,
                target.tenant_id,
                delivery_id,
                state=DeliveryState.FAILED,
                next_attempt_at=None,
                updated_at=now,
            )
            return None
        return Claimed(
            delivery_id=delivery.id,
            tenant_id=target.tenant_id,
            target_id=target.id,
            message_id=message.id,
            url=target.url,
            written_at=message.created_at,
            body=body,
            secrets=tuple(signing_secrets(target, now=now)),
            per_second=target.max_deliveries_per_second
            or get_settings().webhooks.deliveries_per_second,
        )


def _within_rate(claimed: Claimed) -> bool:
    """The per-target throttle: a fixed one-second window counted in Redis, shared by every
    worker (no Redis in the embedded mode: no throttle). Below 1/s the window is longer."""
    client = get_redis()
    if client is None:
        return True
    window = max(1.0, 1.0 / claimed.per_second)
    allowed = max(1, int(claimed.per_second * window))
    key = f"celeriac:webhooks:rate:{claimed.target_id}:{int(time.time() // window)}"
    pipe = client.pipeline()
    pipe.incr(key)
    pipe.expire(key, int(window) + 1)
    count = int(pipe.execute()[0])
    return count <= allowed


def _postpone(claimed: Claimed, seconds: float) -> None:
    with transaction() as session:
        repository.set_delivery(
            session,
            claimed.tenant_id,
            claimed.delivery_id,
            next_attempt_at=utcnow() + timedelta(seconds=seconds),
        )


def sign(secret: bytes, message_id: str, timestamp: int, body: bytes) -> str:
    """Standard Webhooks ``v1`` signature of one (id, timestamp, body)."""
    signed = f"{message_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(secret, signed, hashlib.sha256).digest()).decode()


@functools.cache
def _tls() -> ssl.SSLContext:
    """One TLS context per process: building one (loading the CA bundle) took 13-17 ms,
    which is what a new httpx.Client per attempt cost before."""
    return ssl.create_default_context(cafile=certifi.where())


def send(claimed: Claimed, resolve: Resolver = resolve_host) -> Response:
    """One HTTP attempt: check the destination, connect to the checked address, post the
    signed body, read at most 8 KiB of the answer, never follow a redirect."""
    settings = get_settings().webhooks
    started = time.monotonic()
    try:
        destination = check_destination(
            claimed.url,
            allow_http=settings.allow_http,
            allowed_networks=parse_allowed_networks(settings.allowed_cidrs),
            resolve=resolve,
        )
    except UnsafeDestination as exc:
        return Response(error=f"destination refused: {exc}")
    address = destination.addresses[0]
    host = f"[{address}]" if isinstance(address, IPv6Address) else str(address)
    url = f"{destination.scheme}://{host}:{destination.port}{destination.path}"
    timestamp = int(time.time())
    default_port = 443 if destination.scheme == "https" else 80
    host_header = (
        destination.host
        if destination.port == default_port
        else (f"{destination.host}:{destination.port}")
    )
    headers = {
        "Host": host_header,
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        "webhook-id": claimed.message_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": " ".join(
            sign(s, claimed.message_id, timestamp, claimed.body) for s in claimed.secrets
        ),
    }
    extensions = {"sni_hostname": destination.host} if destination.scheme == "https" else {}
    deadline = started + settings.timeout_seconds
    try:
        with (
            httpx.Client(
                timeout=settings.timeout_seconds,
                follow_redirects=False,
                trust_env=False,
                verify=_tls(),
            ) as client,
            client.stream(
                "POST", url, content=claimed.body, headers=headers, extensions=extensions
            ) as answer,
        ):
            kept = bytearray()
            for chunk in answer.iter_raw():
                kept += chunk
                if len(kept) >= BODY_KEPT_BYTES or time.monotonic() > deadline:
                    break
            elapsed = time.monotonic() - started
            if elapsed > settings.timeout_seconds:
                return Response(
                    answer.status_code,
                    _text(kept),
                    f"answered after {elapsed:.1f} s (limit {settings.timeout_seconds:.0f} s)",
                    _ms(started),
                )
            error = None
            if 300 <= answer.status_code < 400:
                error = f"redirect to {answer.headers.get('location', '?')} (not followed)"
            return Response(
                answer.status_code,
                _text(kept),
                error,
                _ms(started),
                _retry_after(answer.headers.get("retry-after")),
            )
    except httpx.TimeoutException:
        return Response(
            error=f"no answer within {settings.timeout_seconds:.0f} s", duration_ms=_ms(started)
        )
    except httpx.HTTPError as exc:
        return Response(error=f"{type(exc).__name__}: {exc}"[:500], duration_ms=_ms(started))


def _text(raw: bytes | bytearray) -> str:
    return bytes(raw[:BODY_KEPT_BYTES]).decode("utf-8", errors="replace")


def _ms(started: float) -> int:
    return int((time.monotonic() - started) * 1000)


def _retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date), else None."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if moment.tzinfo is None:
        return None
    return max(0.0, (moment - utcnow()).total_seconds())


def _record(claimed: Claimed, response: Response, trigger: AttemptTrigger) -> DeliveryState:
    """The attempt, the delivery's next state and the target's health, in one transaction."""
    settings = get_settings().webhooks
    now = utcnow()
    attempt_id = uuid.uuid4()
    with transaction() as session:
        delivery, target = repository.lock_delivery_and_target(
            session, claimed.tenant_id, claimed.delivery_id, claimed.target_id
        )
        delivery.attempt_count += 1
        delivery.last_attempt_at = now
        next_at = None
        if response.succeeded:
            delivery.state = DeliveryState.SUCCEEDED
            target.failing_since = None
            _count_delivered(session, claimed, now)
        elif response.status_code == 410:
            delivery.state = DeliveryState.FAILED
            _disable(session, target, "the receiver answered 410 Gone")
        else:
            schedule = settings.retry_schedule_seconds
            if delivery.attempt_count > len(schedule):
                delivery.state = DeliveryState.FAILED
            else:
                delay = schedule[delivery.attempt_count - 1] * random.uniform(0.9, 1.1)  # noqa: S311
                if response.retry_after is not None and response.status_code in (429, 503):
                    delay = min(response.retry_after, settings.max_retry_after_seconds)
                next_at = now + timedelta(seconds=delay)
            target.failing_since = target.failing_since or now
            failing_for = (now - target.failing_since).total_seconds()
            if (
                target.state is TargetState.ENABLED
                and failing_for >= settings.disable_after_seconds
            ):
                _disable(session, target, f"failing for {failing_for / 86400:.1f} days")
                if next_at is not None:
                    delivery.state, next_at = DeliveryState.FAILED, None
        delivery.next_attempt_at = next_at
        delivery.updated_at = now
        repository.add_attempt(
            session,
            WebhookAttempt(
                id=attempt_id,
                tenant_id=claimed.tenant_id,
                delivery_id=claimed.delivery_id,
                target_id=claimed.target_id,
                attempted_at=now,
                trigger=trigger,
                status_code=response.status_code,
                response_body=response.body,
                duration_ms=response.duration_ms,
                error=response.error,
                next_attempt_at=next_at,
            ),
        )
        return delivery.state


def _disable(session: Session, target: WebhookTarget, reason: str) -> None:
    target.state = TargetState.DISABLED
    target.disabled_reason = reason[:200]
    events.enqueue(
        session,
        target.tenant_id,
        EventType.WEBHOOK_DISABLED,
        f"target:{target.id}:disabled:{uuid.uuid4().hex}",
        {"target_id": str(target.id), "url": target.url, "reason": reason},
    )


def _count_delivered(session: Session, claimed: Claimed, now: datetime) -> None:
    """``webhooks.delivered``: one record per delivery (a message to one target) that got
    a 2xx, whatever the attempts it took; a manual resend of a delivered message, or an
    attempt redone after a worker died just after its 2xx, bills nothing more (the id comes
    from the delivery; ADR 0010)."""
    insert_usage(
        session,
        [
            webhook_delivered_row(
                delivery_id=claimed.delivery_id,
                tenant_id=claimed.tenant_id,
                target_id=claimed.target_id,
                message_id=claimed.message_id,
                delivered_at=now,
            )
        ],
    )


def due_deliveries(limit: int = 1000) -> int:
    """Publish every delivery that is due (beat): retries whose time came, deliveries whose
    message was lost or whose worker died. Duplicates are harmless (the claim)."""
    with transaction() as session:
        rows = repository.unscoped_due_deliveries(session, utcnow(), limit)
    by_tenant: dict[str, list[str]] = {}
    for delivery_id, slug in rows:
        by_tenant.setdefault(slug, []).append(str(delivery_id))
    publisher = default_publisher()
    for slug, ids in by_tenant.items():
        publisher.publish_or_leave(
            events.delivery_messages(ids, slug, Priority.NORMAL, AttemptTrigger.SCHEDULED.value)
        )
    return len(rows)
