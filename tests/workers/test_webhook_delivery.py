"""Webhook delivery against a real HTTP receiver on 127.0.0.1: signatures, retries, the
answers that end a delivery, throttling and the address check at delivery time. Attempts
run in this process (``webhooks.deliver``), on real PostgreSQL and Redis."""

from __future__ import annotations

import ipaddress
import json
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest
from conftest import TenantFixture, clear_process_caches
from fastapi.testclient import TestClient
from sqlalchemy import select
from standardwebhooks.webhooks import Webhook

from celeriac.client.webhooks import InvalidSignature, verify
from celeriac.platform.db import get_sessionmaker
from celeriac.platform.models import (
    AttemptTrigger,
    DeliveryState,
    TargetState,
    UsageRecord,
    WebhookAttempt,
    WebhookDelivery,
    WebhookMessage,
    WebhookTarget,
    utcnow,
)
from celeriac.platform.settings import Settings, get_settings
from celeriac.platform.webhooks.destinations import IPAddress
from celeriac.platform.webhooks.routes import destination_resolver
from celeriac.workers import webhooks

from worker_support import Receiver, Reply


@pytest.fixture
def receiver() -> Iterator[Callable[..., Receiver]]:
    made: list[Receiver] = []

    def make(*replies: Reply) -> Receiver:
        made.append(Receiver(*replies))
        return made[-1]

    yield make
    for r in made:
        r.close()


# --- settings and helpers ------------------------------------------------------------


@pytest.fixture
def fast_retries(api_settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """A compressed retry schedule (the shipped one waits 5 s, 5 min, ... 24 h)."""
    monkeypatch.setenv("CELERIAC_WEBHOOKS__RETRY_SCHEDULE_SECONDS", "[0.05, 0.05, 0.05]")
    monkeypatch.setenv("CELERIAC_WEBHOOKS__TIMEOUT_SECONDS", "1")
    get_settings.cache_clear()
    return get_settings()


@dataclass
class Target:
    id: str
    secret: str


def _target(client: TestClient, tenant: TenantFixture, url: str, **extra: Any) -> Target:
    answer = client.post(
        "/v1/webhooks", headers=tenant.headers, json={"url": url, "event_types": ["*"], **extra}
    )
    assert answer.status_code == 201, answer.text
    return Target(answer.json()["id"], answer.json()["secret"])


def _test_event(client: TestClient, tenant: TenantFixture, target: Target) -> str:
    answer = client.post(f"/v1/webhooks/{target.id}/test", headers=tenant.headers)
    assert answer.status_code == 202, answer.text
    message_id: str = answer.json()["message_id"]
    return message_id


@dataclass
class Sent:
    """A tenant, its receiver, a target pointing at it and one test event on its way."""

    tenant: TenantFixture
    hook: Receiver
    target: Target
    message_id: str

    @property
    def delivery(self) -> WebhookDelivery:
        return _delivery(self.message_id)


@pytest.fixture
def sent(
    client: TestClient,
    make_tenant: Callable[..., TenantFixture],
    receiver: Callable[..., Receiver],
) -> Callable[..., Sent]:
    def send(*replies: Reply) -> Sent:
        tenant, hook = make_tenant(), receiver(*replies)
        target = _target(client, tenant, hook.url)
        return Sent(tenant, hook, target, _test_event(client, tenant, target))

    return send


def _delivery(message_id: str) -> WebhookDelivery:
    with get_sessionmaker()() as session:
        return session.scalars(
            select(WebhookDelivery).where(WebhookDelivery.message_id == message_id)
        ).one()


def _attempts(delivery_id: uuid.UUID) -> list[WebhookAttempt]:
    with get_sessionmaker()() as session:
        return list(
            session.scalars(
                select(WebhookAttempt)
                .where(WebhookAttempt.delivery_id == delivery_id)
                .order_by(WebhookAttempt.attempted_at)
            )
        )


def _run_until_final(delivery_id: uuid.UUID, deadline_seconds: float = 20) -> DeliveryState:
    """Attempt the delivery each time it is due, as the distribution pool would."""
    deadline = time.monotonic() + deadline_seconds
    while time.monotonic() < deadline:
        with get_sessionmaker()() as session:
            delivery = session.get(WebhookDelivery, delivery_id)
            assert delivery is not None
            if delivery.state is not DeliveryState.PENDING:
                return delivery.state
            due = delivery.next_attempt_at
        if due is not None and due > utcnow():
            time.sleep(min(0.5, (due - utcnow()).total_seconds()))  # the schedule, not a race
            continue
        webhooks.deliver(str(delivery_id))
    raise AssertionError("the delivery did not end in time")


# --- tests ---------------------------------------------------------------------------


def test_a_delivery_verifies_with_the_standard_webhooks_library(
    client: TestClient,
    make_tenant: Callable[..., TenantFixture],
    sent: Callable[..., Sent],
    receiver: Callable[..., Receiver],
) -> None:
    it = sent()
    hook, target = it.hook, it.target
    message_id = it.message_id
    delivery = _delivery(message_id)
    assert webhooks.deliver(str(delivery.id)) is DeliveryState.SUCCEEDED

    (got,) = hook.received
    assert got.headers["webhook-id"] == message_id
    event = Webhook(target.secret).verify(got.body, got.headers)
    assert event["type"] == "webhook.test"
    assert event["data"]["target_id"] == target.id
    assert verify(target.secret, got.headers, got.body)["webhook-id"] == message_id
    with pytest.raises(InvalidSignature):
        verify(target.secret, got.headers, got.body.replace(b"test", b"tEst"))
    assert abs(int(got.headers["webhook-timestamp"]) - time.time()) < 60
    # A 2xx ends it: no further attempt, whatever republishes it.
    assert webhooks.deliver(str(delivery.id)) is None
    assert len(hook.received) == 1
    with get_sessionmaker()() as session:
        (usage,) = session.scalars(
            select(UsageRecord).where(UsageRecord.metric == "webhooks.delivered")
        ).all()
        assert usage.properties["delivery_id"] == str(delivery.id)


def test_a_delivery_is_billed_once_however_often_it_is_attempted_or_resent(
    client: TestClient, sent: Callable[..., Sent]
) -> None:
    """``webhooks.delivered`` counts deliveries (a message to one target), not attempts: a
    redelivered task, a 2xx sent again after a worker died before recording the first, and
    a manual resend all bill the one record (ADR 0010)."""
    it = sent()
    delivery = it.delivery
    assert webhooks.deliver(str(delivery.id)) is DeliveryState.SUCCEEDED
    assert webhooks.deliver(str(delivery.id)) is None  # the task message redelivered
    resent = client.post(f"/v1/webhook-messages/{it.message_id}/resend", headers=it.tenant.headers)
    assert resent.status_code == 202, resent.text
    assert webhooks.deliver(str(delivery.id), AttemptTrigger.MANUAL) is DeliveryState.SUCCEEDED
    assert len(it.hook.received) == 2  # at least once: the receiver saw both
    assert len(_attempts(delivery.id)) == 2  # both attempts are in the log
    with get_sessionmaker()() as session:
        billed = session.scalars(
            select(UsageRecord).where(UsageRecord.metric == "webhooks.delivered")
        ).all()
    assert [r.id for r in billed] == [f"delivery_{delivery.id}:webhooks.delivered"]


def test_after_a_rotation_both_secrets_sign_until_the_overlap_ends(
    client: TestClient,
    make_tenant: Callable[..., TenantFixture],
    receiver: Callable[..., Receiver],
) -> None:
    tenant, hook = make_tenant(), receiver()
    old = _target(client, tenant, hook.url)
    rotated = client.post(f"/v1/webhooks/{old.id}/rotate-secret", headers=tenant.headers)
    new_secret = rotated.json()["secret"]
    webhooks.deliver(str(_delivery(_test_event(client, tenant, old)).id))
    got = hook.received[-1]
    assert len(got.headers["webhook-signature"].split()) == 2
    for secret in (old.secret, new_secret):
        Webhook(secret).verify(got.body, got.headers)

    ended = client.post(f"/v1/webhooks/{old.id}/end-secret-overlap", headers=tenant.headers)
    assert ended.status_code == 200
    assert ended.json()["previous_secret_expires_at"] is None
    webhooks.deliver(str(_delivery(_test_event(client, tenant, old)).id))
    got = hook.received[-1]
    Webhook(new_secret).verify(got.body, got.headers)
    with pytest.raises(InvalidSignature):
        verify(old.secret, got.headers, got.body)


def test_failures_are_retried_on_schedule_then_succeed_once(
    client: TestClient,
    make_tenant: Callable[..., TenantFixture],
    receiver: Callable[..., Receiver],
    fast_retries: Settings,
) -> None:
    tenant = make_tenant()
    hook = receiver(Reply(500, body=b"down"), Reply(502), Reply(200))
    target = _target(client, tenant, hook.url)
    delivery = _delivery(_test_event(client, tenant, target))
    assert _run_until_final(delivery.id) is DeliveryState.SUCCEEDED
    attempts = _attempts(delivery.id)
    assert [a.status_code for a in attempts] == [500, 502, 200]
    assert attempts[0].response_body == "down"
    assert attempts[0].next_attempt_at is not None
    assert attempts[-1].next_attempt_at is None
    assert len({r.headers["webhook-id"] for r in hook.received}) == 1  # same id each time
    assert webhooks.deliver(str(delivery.id)) is None
    assert len(hook.received) == 3
    listed = client.get(f"/v1/webhooks/{target.id}/attempts", headers=tenant.headers).json()
    assert [a["status_code"] for a in listed["data"]] == [200, 502, 500]
    failed_only = client.get(
        f"/v1/webhooks/{target.id}/attempts?succeeded=false", headers=tenant.headers
    ).json()
    assert [a["status_code"] for a in failed_only["data"]] == [502, 500]
    with get_sessionmaker()() as session:
        stored = session.get(WebhookTarget, uuid.UUID(target.id))
        assert stored is not None
        assert stored.failing_since is None


def test_after_the_last_retry_the_delivery_fails_and_can_be_recovered(
    client: TestClient,
    make_tenant: Callable[..., TenantFixture],
    sent: Callable[..., Sent],
    receiver: Callable[..., Receiver],
    fast_retries: Settings,
) -> None:
    it = sent(Reply(500))
    tenant, hook, target = it.tenant, it.hook, it.target
    message_id = it.message_id
    delivery = _delivery(message_id)
    assert _run_until_final(delivery.id) is DeliveryState.FAILED
    assert len(_attempts(delivery.id)) == 4  # the first attempt and three retries
    message = client.get(f"/v1/webhook-messages/{message_id}", headers=tenant.headers).json()
    assert message["deliveries"][0]["state"] == "failed"

    hook.replies = [Reply(204)]
    since = (utcnow() - timedelta(hours=1)).isoformat()
    recovered = client.post(
        f"/v1/webhooks/{target.id}/recover", headers=tenant.headers, json={"since": since}
    )
    assert recovered.status_code == 202
    assert len(recovered.json()["deliveries"]) == 1
    assert _run_until_final(delivery.id) is DeliveryState.SUCCEEDED
    assert len(_attempts(delivery.id)) == 5  # the log keeps the earlier round


def test_no_answer_within_the_timeout_is_a_failure(
    client: TestClient,
    make_tenant: Callable[..., TenantFixture],
    sent: Callable[..., Sent],
    receiver: Callable[..., Receiver],
    fast_retries: Settings,
) -> None:
    it = sent(Reply(200, delay=3.0))
    delivery = it.delivery
    assert webhooks.deliver(str(delivery.id)) is DeliveryState.PENDING
    (attempt,) = _attempts(delivery.id)
    assert attempt.status_code is None
    assert "no answer within 1 s" in (attempt.error or "")


def test_a_redirect_is_a_failure_and_is_not_followed(
    client: TestClient,
    make_tenant: Callable[..., TenantFixture],
    receiver: Callable[..., Receiver],
    fast_retries: Settings,
) -> None:
    tenant, elsewhere = make_tenant(), receiver()
    hook = receiver(Reply(307, headers={"location": elsewhere.url}))
    delivery = _delivery(_test_event(client, tenant, _target(client, tenant, hook.url)))
    assert webhooks.deliver(str(delivery.id)) is DeliveryState.PENDING
    (attempt,) = _attempts(delivery.id)
    assert attempt.status_code == 307
    assert "not followed" in (attempt.error or "")
    assert elsewhere.received == []


def test_410_gone_disables_the_target_at_once(
    client: TestClient,
    make_tenant: Callable[..., TenantFixture],
    sent: Callable[..., Sent],
    receiver: Callable[..., Receiver],
) -> None:
    it = sent(Reply(410))
    tenant, target = it.tenant, it.target
    delivery = it.delivery
    assert webhooks.deliver(str(delivery.id)) is DeliveryState.FAILED
    shown = client.get(f"/v1/webhooks/{target.id}", headers=tenant.headers).json()
    assert shown["state"] == "disabled"
    assert "410" in shown["disabled_reason"]
    events = client.get(
        "/v1/webhook-messages?event_type=webhook.disabled", headers=tenant.headers
    ).json()["data"]
    assert [e["payload"]["data"]["target_id"] for e in events] == [target.id]


def test_429_with_retry_after_sets_the_next_attempt(
    client: TestClient,
    make_tenant: Callable[..., TenantFixture],
    sent: Callable[..., Sent],
    receiver: Callable[..., Receiver],
    fast_retries: Settings,
) -> None:
    it = sent(Reply(429, headers={"retry-after": "120"}))
    delivery = it.delivery
    before = utcnow()
    assert webhooks.deliver(str(delivery.id)) is DeliveryState.PENDING
    due = _delivery(delivery.message_id).next_attempt_at
    assert due is not None
    assert timedelta(seconds=115) < due - before < timedelta(seconds=125)  # not 0.05 s
    assert webhooks.deliver(str(delivery.id)) is None  # not due yet


def test_a_target_failing_for_too_long_is_disabled(
    client: TestClient,
    make_tenant: Callable[..., TenantFixture],
    sent: Callable[..., Sent],
    receiver: Callable[..., Receiver],
    fast_retries: Settings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Waits of 0.2 s (+-10%): the third attempt comes at least 0.36 s after the first
    # failure, past the 0.3 s after which a failing target is disabled.
    monkeypatch.setenv("CELERIAC_WEBHOOKS__RETRY_SCHEDULE_SECONDS", "[0.2, 0.2, 0.2]")
    monkeypatch.setenv("CELERIAC_WEBHOOKS__DISABLE_AFTER_SECONDS", "0.3")
    get_settings.cache_clear()
    it = sent(Reply(500))
    target = it.target
    delivery = it.delivery
    assert _run_until_final(delivery.id) is DeliveryState.FAILED
    with get_sessionmaker()() as session:
        stored = session.get(WebhookTarget, uuid.UUID(target.id))
        assert stored is not None
        assert stored.state is TargetState.DISABLED
        assert "failing for" in (stored.disabled_reason or "")
        assert (
            session.scalars(select(WebhookMessage.event_type)).all().count("webhook.disabled") == 1
        )


def test_deliveries_to_one_target_are_throttled(
    client: TestClient,
    make_tenant: Callable[..., TenantFixture],
    receiver: Callable[..., Receiver],
) -> None:
    tenant, hook = make_tenant(), receiver()
    target = _target(client, tenant, hook.url, max_deliveries_per_second=2)
    deliveries = [_delivery(_test_event(client, tenant, target)) for _ in range(6)]
    # The throttle counts per wall-clock second: start at the top of one (a clock
    # alignment, not a wait for another process), so six quick attempts share a window.
    time.sleep(1 - time.time() % 1 + 0.01)
    window = int(time.time())
    states = [webhooks.deliver(str(d.id)) for d in deliveries]
    assert int(time.time()) == window, "six attempts took over a second"
    assert len(hook.received) == 2
    assert states.count(DeliveryState.SUCCEEDED) == 2
    assert states.count(DeliveryState.PENDING) == 4  # postponed, not attempted
    assert sum(len(_attempts(d.id)) for d in deliveries) == 2


def test_the_address_is_checked_again_at_delivery_and_connected_to(
    client: TestClient,
    make_tenant: Callable[..., TenantFixture],
    receiver: Callable[..., Receiver],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """hooks.example.test resolved to a public address at registration, to 127.0.0.1 at
    delivery: refused unless loopback is allowlisted; when it is, the connection goes to
    the address just checked, with the name in the Host header."""
    hook = receiver()
    port = hook.server.server_address[1]

    def public(host: str, port: int) -> list[IPAddress]:
        return [ipaddress.ip_address("93.184.215.14")]

    def loopback(host: str, port: int) -> list[IPAddress]:
        return [ipaddress.ip_address("127.0.0.1")]

    client.app.dependency_overrides[destination_resolver] = lambda: public  # type: ignore[attr-defined]
    tenant = make_tenant()
    target = _target(client, tenant, f"http://hooks.example.test:{port}/hook")
    delivery = _delivery(_test_event(client, tenant, target))

    monkeypatch.setenv("CELERIAC_WEBHOOKS__ALLOWED_CIDRS", "[]")
    get_settings.cache_clear()
    assert webhooks.deliver(str(delivery.id), resolve=loopback) is DeliveryState.PENDING
    (attempt,) = _attempts(delivery.id)
    assert "127.0.0.1" in (attempt.error or "")
    assert "loopback" in (attempt.error or "")
    assert hook.received == []

    monkeypatch.setenv("CELERIAC_WEBHOOKS__ALLOWED_CIDRS", '["127.0.0.0/8"]')
    clear_process_caches()
    with get_sessionmaker().begin() as session:
        row = session.get(WebhookDelivery, delivery.id)
        assert row is not None
        row.next_attempt_at = utcnow()
    assert webhooks.deliver(str(delivery.id), resolve=loopback) is DeliveryState.SUCCEEDED
    (got,) = hook.received
    assert got.headers["Host"] == f"hooks.example.test:{port}"


def test_the_event_payload_is_small_and_points_at_the_results(
    client: TestClient,
    make_tenant: Callable[..., TenantFixture],
    sent: Callable[..., Sent],
    receiver: Callable[..., Receiver],
) -> None:
    it = sent()
    tenant, hook, target = it.tenant, it.hook, it.target
    message_id = it.message_id
    resent = client.post(
        f"/v1/webhook-messages/{message_id}/resend",
        headers=tenant.headers,
        json={"target_id": target.id},
    )
    assert resent.status_code == 202
    assert resent.json()["deliveries"][0]["state"] == "pending"
    webhooks.deliver(resent.json()["deliveries"][0]["id"])
    body = json.loads(hook.received[-1].body)
    assert set(body) == {"type", "timestamp", "data"}
    assert len(hook.received[-1].body) < 20_000
