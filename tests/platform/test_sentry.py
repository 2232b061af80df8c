"""Sentry on the API: the app uvicorn serves (create_served_app) reports an unhandled
error once, through sentry-sdk's real transport to a local sink, with its tags and stack
trace and without anything the tenant sent."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Annotated, Any

import pytest
import sentry_sdk
from conftest import TenantFixture, clear_process_caches
from fastapi import Depends
from fastapi.testclient import TestClient

from celeriac.platform.api.deps import Authenticator
from celeriac.platform.api.observability import create_served_app
from celeriac.platform.auth.context import TenantContext
from celeriac.platform.observability import REDACTED, scrub_event
from celeriac.platform.settings import Settings

from observability_support import raw_envelopes, sentry_dsn, sentry_events
from worker_support import Receiver, wait_until

MARKER = "tenant-secret-4b1d"
Reader = Annotated[TenantContext, Depends(Authenticator("jobs:read"))]


@pytest.fixture
def sink() -> Iterator[Receiver]:
    receiver = Receiver()
    yield receiver
    receiver.close()


@pytest.fixture
def served_client(
    api_settings: Settings, sink: Receiver, monkeypatch: pytest.MonkeyPatch
) -> Iterator[TestClient]:
    monkeypatch.setenv("CELERIAC_SENTRY_DSN", sentry_dsn(sink))
    monkeypatch.setenv("CELERIAC_ENVIRONMENT", "sentry-test")
    clear_process_caches()
    handlers = logging.getLogger().handlers[:]
    app = create_served_app()

    @app.post("/v1/explode")
    def explode(body: dict[str, Any], tenant: Reader) -> None:
        raise RuntimeError(f"could not use {body['value']}")

    try:
        with TestClient(app, raise_server_exceptions=False) as test_client:
            yield test_client
    finally:
        sentry_sdk.flush(5)
        sentry_sdk.init()  # no DSN: off again for the rest of this process
        logging.getLogger().handlers[:] = handlers


def test_an_unhandled_api_error_arrives_once_with_tags_and_no_tenant_data(
    served_client: TestClient, sink: Receiver, make_tenant: Callable[..., TenantFixture]
) -> None:
    tenant = make_tenant("sentried")
    answer = served_client.post(
        "/v1/explode",
        json={"value": MARKER},
        headers={**tenant.headers, "Cookie": f"session={MARKER}", "X-Note": MARKER},
    )
    assert answer.status_code == 500
    assert answer.headers["content-type"] == "application/problem+json"
    request_id = answer.headers["x-request-id"]
    sentry_sdk.flush(5)

    def errors() -> list[dict[str, Any]]:
        return [e for e in sentry_events(sink) if e.get("exception")]

    wait_until(errors, 30, "the error event")
    sentry_sdk.flush(5)
    (event,) = errors()
    assert event["tags"]["component"] == "api"
    assert event["tags"]["tenant_id"] == tenant.id
    assert event["tags"]["request_id"] == request_id
    assert event["environment"] == "sentry-test"
    (exception,) = event["exception"]["values"]
    assert exception["type"] == "RuntimeError"
    assert exception["value"] == REDACTED
    assert any(f.get("function") == "explode" for f in exception["stacktrace"]["frames"])
    assert "Authorization" not in str(event.get("request", {}).get("headers", {}))
    for body in raw_envelopes(sink):
        assert MARKER.encode() not in body
        assert tenant.key.encode() not in body


def test_scrubber_keeps_the_location_and_drops_the_values() -> None:
    event = {
        "exception": {
            "values": [
                {
                    "type": "ValueError",
                    "value": f'Unable to parse string "{MARKER}" at position 0',
                    "stacktrace": {
                        "frames": [{"function": "analyze", "lineno": 3, "vars": {"row": MARKER}}]
                    },
                }
            ]
        },
        "logentry": {
            "message": "could not parse %s",
            "params": [MARKER],
            "formatted": f"could not parse {MARKER}",
        },
        "request": {
            "data": {"records": [MARKER]},
            "cookies": {"s": MARKER},
            "query_string": f"q={MARKER}",
            "headers": {"Authorization": f"Bearer {MARKER}", "User-Agent": "curl"},
        },
        "extra": {
            "celery-job": {
                "task_name": "celeriac.compute.run_task",
                "args": [MARKER],
                "kwargs": {"x": MARKER},
            },
            "sys.argv": [MARKER],
        },
        "breadcrumbs": {"values": [{"message": "x", "data": {"value": MARKER}}]},
        "user": {"ip_address": "127.0.0.1"},
    }
    scrubbed = scrub_event(event, {})
    assert MARKER not in repr(scrubbed)
    frame = scrubbed["exception"]["values"][0]["stacktrace"]["frames"][0]
    assert frame == {"function": "analyze", "lineno": 3}
    assert scrubbed["exception"]["values"][0]["type"] == "ValueError"
    assert scrubbed["logentry"]["formatted"] == "could not parse %s"
    assert scrubbed["request"]["headers"] == {"User-Agent": "curl"}
    assert scrubbed["extra"] == {"celery-job": {"task_name": "celeriac.compute.run_task"}}
