"""The SDK's webhook-target, key and usage methods against a live platform (API under
uvicorn, real workers delivering to a receiver on 127.0.0.1, PostgreSQL, Redis): what a
tenant notices when it calls each of them."""

from __future__ import annotations

import asyncio
import csv
import io
from collections.abc import Callable, Iterator
from datetime import timedelta
from decimal import Decimal

import pytest
from conftest import TenantFixture

from celeriac.client import APIError, AsyncClient, Client, Conflict, JobState, NotFound
from celeriac.client.models import UsageRecord, WebhookAttempt, WebhookTarget
from celeriac.client.webhooks import verify
from celeriac.platform.models import utcnow

from sdk_support import ALL_SCOPES, LivePlatform
from worker_support import Receiver, Reply, wait_until

pytestmark = pytest.mark.slow

RECORDS = [{"id": i, "amount": float(i)} for i in range(10)]


@pytest.fixture
def hook() -> Iterator[Receiver]:
    receiver = Receiver()
    yield receiver
    receiver.close()


def _succeeded_attempts(client: Client, target_id: str, count: int) -> list[WebhookAttempt]:
    def enough() -> list[WebhookAttempt] | None:
        attempts = list(client.webhooks.attempts(target_id, succeeded=True))
        return attempts if len(attempts) >= count else None

    found: list[WebhookAttempt] = wait_until(enough, 60, f"{count} recorded attempt(s)")
    return found


def test_webhook_target_methods_manage_and_deliver(
    live_platform: LivePlatform, tenant: TenantFixture, hook: Receiver
) -> None:
    with Client(base_url=live_platform.url, api_key=tenant.key) as client:
        created = client.webhooks.create(
            hook.url, event_types=["job.*"], description="sdk receiver"
        )
        target_id = str(created.id)
        assert created.secret.startswith("whsec_")
        assert (created.state, created.url, created.description) == (
            "enabled",
            hook.url,
            "sdk receiver",
        )
        assert [str(t.id) for t in client.webhooks.list()] == [target_id]
        assert client.webhooks.get(target_id).event_types == ["job.*"]

        updated = client.webhooks.update(
            target_id, event_types=["job.succeeded", "webhook.test"], max_deliveries_per_second=5
        )
        assert updated.event_types == ["job.succeeded", "webhook.test"]
        assert updated.max_deliveries_per_second == 5
        assert updated.description == "sdk receiver"  # left out: kept
        assert client.webhooks.get(target_id).event_types == updated.event_types

        disabled = client.webhooks.disable(target_id)
        assert disabled.state == "disabled"
        assert client.webhooks.get(target_id).state == "disabled"
        with pytest.raises(Conflict) as refused:
            client.webhooks.test(target_id)  # nothing is sent to a disabled target
        assert "disabled" in refused.value.detail
        enabled = client.webhooks.enable(target_id)
        assert enabled.state == "enabled"
        assert enabled.disabled_reason is None

        rotated = client.webhooks.rotate_secret(target_id, previous_secret_expires_in_seconds=600)
        assert rotated.secret.startswith("whsec_")
        assert rotated.secret != created.secret
        assert rotated.previous_secret_expires_at is not None
        ended = client.webhooks.end_secret_overlap(target_id)
        assert ended.previous_secret_expires_at is None

        # A test event reaches the receiver, signed with the new secret only, and its
        # attempt is in the target's log.
        message_id = client.webhooks.test(target_id)
        wait_until(lambda: len(hook.received) >= 1, 60, "the test event to be delivered")
        (got,) = hook.received
        assert got.headers["webhook-id"] == message_id
        assert verify(rotated.secret, got.headers, got.body)["webhook-id"] == message_id
        (attempt,) = _succeeded_attempts(client, target_id, 1)
        assert (attempt.status_code, attempt.trigger) == (200, "manual")
        assert attempt.response_body == "ok"
        assert list(client.webhooks.attempts(target_id, status_code=500)) == []

        message = client.webhook_messages.get(message_id)
        assert message.event_type == "webhook.test"
        assert message.payload["data"]["target_id"] == target_id
        (delivery,) = message.deliveries
        assert (str(delivery.target_id), delivery.state) == (target_id, "succeeded")
        listed = list(client.webhook_messages.list(event_type="webhook.test"))
        assert [m.id for m in listed] == [message_id]

        # Resend: the same message (same webhook-id) again, a second attempt logged.
        assert client.webhook_messages.resend(message_id, target_id=target_id) == [str(delivery.id)]
        wait_until(lambda: len(hook.received) >= 2, 60, "the resent event to be delivered")
        assert hook.received[1].headers["webhook-id"] == message_id
        assert len(_succeeded_attempts(client, target_id, 2)) == 2
        # Nothing failed, so there is nothing to recover.
        since = utcnow() - timedelta(hours=1)
        assert client.webhooks.recover(target_id, since=since) == []

        client.webhooks.delete(target_id)
        assert list(client.webhooks.list()) == []
        with pytest.raises(NotFound):
            client.webhooks.get(target_id)

        # A receiver that answers 410 once: the delivery fails, the target is disabled with
        # the reason; enabled again, recover sends the failed delivery once more.
        gone = Receiver(Reply(410), Reply())
        try:
            second = client.webhooks.create(gone.url)
            failing = client.webhooks.test(second.id)

            def turned_off() -> WebhookTarget | None:
                target = client.webhooks.get(second.id)
                return target if target.state == "disabled" else None

            shown = wait_until(turned_off, 60, "the 410 to disable the target")
            assert "410" in (shown.disabled_reason or "")
            (answered_410,) = client.webhooks.attempts(second.id, status_code=410)
            assert answered_410.trigger == "manual"
            (failed,) = client.webhook_messages.get(failing).deliveries
            assert failed.state == "failed"
            assert client.webhooks.enable(second.id).disabled_reason is None
            assert client.webhooks.recover(second.id, since=since) == [str(failed.id)]
            wait_until(lambda: len(gone.received) >= 2, 60, "the recovered delivery")
            (replayed,) = _succeeded_attempts(client, str(second.id), 1)
            assert replayed.trigger == "replay"
            wait_until(
                lambda: client.webhook_messages.get(failing).deliveries[0].state == "succeeded",
                60,
                "the recovered delivery to succeed",
            )
        finally:
            gone.close()


def test_key_methods_create_list_roll_and_revoke(
    live_api: LivePlatform, tenant: TenantFixture
) -> None:
    with Client(base_url=live_api.url, api_key=tenant.key) as client:
        created = client.keys.create(name="ci", scopes=["jobs:read"])
        assert created.key.startswith(created.prefix)
        assert created.key.endswith(created.last_four)
        assert (created.name, created.scopes, created.revoked_at) == ("ci", ["jobs:read"], None)
        listed = {str(k.id): k for k in client.keys.list()}
        assert str(created.id) in listed
        assert not hasattr(listed[str(created.id)], "key")  # the secret is not shown again
        assert client.keys.get(created.id).name == "ci"

        with Client(base_url=live_api.url, api_key=created.key) as ci:
            assert list(ci.jobs.list()) == []  # the new key works, within its scope
            with pytest.raises(APIError) as forbidden:
                list(ci.keys.list())  # keys:manage was not granted
            assert forbidden.value.status == 403

        rolled = client.keys.roll(created.id, old_key_expires_in_seconds=600)
        assert rolled.id != created.id
        assert rolled.scopes == ["jobs:read"]
        assert client.keys.get(created.id).replaced_by_id == rolled.id

        revoked = client.keys.revoke(created.id)
        assert revoked.revoked_at is not None
        assert client.keys.get(created.id).revoked_at is not None
        with Client(base_url=live_api.url, api_key=created.key) as gone:
            with pytest.raises(APIError) as denied:
                list(gone.jobs.list())
            assert denied.value.status == 401
        with Client(base_url=live_api.url, api_key=rolled.key) as replacement:
            assert list(replacement.jobs.list()) == []  # the replacement still works

    async def scenario() -> None:
        async with AsyncClient(base_url=live_api.url, api_key=tenant.key) as client:
            made = await client.keys.create(name="async", scopes=["usage:read"])
            assert made.id in [k.id async for k in client.keys.list()]
            assert (await client.keys.revoke(made.id)).revoked_at is not None

    asyncio.run(scenario())


def test_usage_methods_show_the_tenants_own_records_and_totals(
    live_platform: LivePlatform,
    tenant: TenantFixture,
    make_tenant: Callable[..., TenantFixture],
) -> None:
    other = make_tenant("sdk-neighbour", scopes=ALL_SCOPES)
    with (
        Client(base_url=live_platform.url, api_key=tenant.key) as client,
        Client(base_url=live_platform.url, api_key=other.key) as neighbour,
    ):
        jobs = [client.jobs.submit(records=RECORDS, pipeline="tabular-summary") for _ in range(2)]
        theirs = neighbour.jobs.submit(records=RECORDS, pipeline="tabular-summary")
        for job in [*jobs, theirs]:
            assert job.wait(timeout=120).state is JobState.SUCCEEDED

        def completed() -> list[UsageRecord] | None:
            done = list(client.usage.records(metric="jobs.completed"))
            return done if len(done) == len(jobs) else None

        wait_until(completed, 60, "the jobs' completion to be recorded")
        records = list(client.usage.records(page_size=2))  # pages of two, followed
        assert {str(r.tenant_id) for r in records} == {tenant.id}  # only its own
        by_metric: dict[str, Decimal] = {}
        for record in records:
            by_metric[record.metric] = by_metric.get(record.metric, Decimal(0)) + record.quantity
        assert by_metric["jobs.submitted"] == len(jobs)
        assert by_metric["jobs.completed"] == len(jobs)
        assert by_metric["records.processed"] == len(jobs) * len(RECORDS)
        assert {str(j.id) for j in jobs} <= {
            str(r.properties.get("job_id")) for r in records if r.metric == "jobs.submitted"
        }

        summary = client.usage.summary(granularity="day")
        assert summary.granularity == "day"
        assert {str(t.tenant_id) for t in summary.data} == {tenant.id}
        totals: dict[str, Decimal] = {}
        for total in summary.data:
            totals[total.metric] = totals.get(total.metric, Decimal(0)) + total.quantity
        assert totals == by_metric  # the totals add up the records listed
        only = client.usage.summary(granularity="month", metric="jobs.completed")
        assert [(t.metric, t.quantity) for t in only.data] == [
            ("jobs.completed", Decimal(len(jobs)))
        ]

        exported = list(csv.DictReader(io.StringIO(client.usage.records_csv(limit=1000))))
        assert sorted(row["id"] for row in exported) == sorted(r.id for r in records)
        assert {row["tenant_id"] for row in exported} == {tenant.id}

    async def scenario() -> None:
        async with AsyncClient(base_url=live_platform.url, api_key=other.key) as theirs_async:
            mine = [r async for r in theirs_async.usage.records(metric="jobs.submitted")]
            assert [str(r.properties.get("job_id")) for r in mine] == [str(theirs.id)]
            total = await theirs_async.usage.summary(metric="jobs.submitted")
            assert [(str(t.tenant_id), t.quantity) for t in total.data] == [(other.id, Decimal(1))]

    asyncio.run(scenario())
