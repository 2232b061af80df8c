"""Bad input is a clear 4xx problem+json that leaves nothing written: each case here was a
500 or a silent acceptance (issue 12)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Callable
from typing import Any

import pytest
from conftest import TenantFixture
from fastapi.testclient import TestClient
from httpx import Response
from sqlalchemy import func, select

from celeriac.platform.db import get_sessionmaker
from celeriac.platform.jobs.pipelines import ANALYZER, DATASET, PluginInfo, register_plugins
from celeriac.platform.models import Job
from celeriac.platform.settings import Settings

SPEC = {"datasets": [{"name": "tabular"}], "analyzers": [{"name": "summary"}]}
PIPE = json.dumps(SPEC)
DEEP = "[" * 10_000 + "]" * 10_000
HOOK = "http://127.0.0.1:9/hook"


@pytest.fixture(autouse=True)
def _registry(api_settings: Settings) -> None:
    with get_sessionmaker().begin() as session:
        register_plugins(
            session,
            [
                PluginInfo(DATASET, "tabular", "1.0", {"type": "object"}, produces="table"),
                PluginInfo(ANALYZER, "summary", "1.0", {"type": "object"}, accepts=("table",)),
            ],
        )


@pytest.fixture
def tenant(make_tenant: Callable[..., TenantFixture]) -> TenantFixture:
    return make_tenant("bad-input")


def _refused(answer: Response, status: int, *words: str) -> dict[str, Any]:
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"] == "application/problem+json"
    problem: dict[str, Any] = answer.json()
    for word in words:
        assert word in problem["detail"], problem
    return problem


def _no_jobs() -> None:
    with get_sessionmaker()() as session:
        assert session.scalar(select(func.count()).select_from(Job)) == 0


def _post_raw(client: TestClient, tenant: TenantFixture, body: bytes | str) -> Response:
    return client.post(
        "/v1/jobs", content=body, headers={**tenant.headers, "Content-Type": "application/json"}
    )


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        # nested 10,000 deep in a record, in metadata, in a pipeline step's params
        (f'{{"pipeline": "PIPE", "records": [{{"a": {DEEP}}}]}}', 422, ["nested more than 64"]),
        (
            f'{{"pipeline": "PIPE", "records": [{{}}], "metadata": {{"a": {DEEP}}}}}',
            422,
            ["nested more than 64"],
        ),
        (
            '{"pipeline": {"datasets": [{"name": "tabular", "params": {"a": '
            + "[" * 70
            + "]" * 70
            + '}}], "analyzers": [{"name": "summary"}]}, "records": [{}]}',
            422,
            ["nested more than 64"],
        ),
        # a 5,000-digit integer
        ('{"pipeline": "PIPE", "records": [{"a": ' + "9" * 5000 + "}]}", 422, ["digits"]),
        # a lone surrogate, in a record and in metadata
        ('{"pipeline": "PIPE", "records": [{"a": "\\ud800"}]}', 422, ["surrogate"]),
        ('{"pipeline": "PIPE", "records": [{}], "metadata": {"k": "\\udfff"}}', 422, ["surrogate"]),
        # not JSON: NaN, Infinity, a number that overflows a double
        ('{"pipeline": "PIPE", "records": [{"a": NaN}]}', 400, ["NaN"]),
        ('{"pipeline": "PIPE", "records": [{"a": -Infinity}]}', 400, ["Infinity"]),
        ('{"pipeline": "PIPE", "records": [{"a": 1e400}]}', 422, ["too large"]),
    ],
)
def test_json_job_bodies_that_were_500s_or_accepted(
    client: TestClient, tenant: TenantFixture, body: str, status: int, words: list[str]
) -> None:
    body = body.replace('"PIPE"', PIPE)
    _refused(_post_raw(client, tenant, body), status, *words)
    _no_jobs()


def test_a_utf16_json_body_is_refused(client: TestClient, tenant: TenantFixture) -> None:
    body = json.dumps({"pipeline": SPEC, "records": [{"a": 1}]})
    for encoding in ("utf-16", "utf-16-le", "utf-32"):
        _refused(_post_raw(client, tenant, body.encode(encoding)), 400)
    _no_jobs()
    assert _post_raw(client, tenant, body.encode()).status_code == 202  # the same, in UTF-8


@pytest.mark.parametrize(
    ("field", "value", "words"),
    [
        ("metadata", '{"a": ' + DEEP + "}", ["form field 'metadata'", "nested"]),
        ("pipeline", '{"datasets": ' + DEEP + "}", ["form field 'pipeline'", "nested"]),
        ("metadata", '{"a": ' + "7" * 5000 + "}", ["digits"]),
        ("metadata", '{"a": NaN}', ["NaN"]),
    ],
)
def test_multipart_fields_that_were_500s(
    client: TestClient, tenant: TenantFixture, field: str, value: str, words: list[str]
) -> None:
    fields = {"pipeline": PIPE, field: value}
    answer = client.post(
        "/v1/jobs",
        data=fields,
        headers=tenant.headers,
        files={"file": ("r.csv", b"a,b\n1,2\n", "text/csv")},
    )
    problem = _refused(answer, 422, *words)
    assert problem["errors"][0]["pointer"] == f"#/body/{field}"
    _no_jobs()


def test_a_csv_with_an_unclosed_quote_is_refused(client: TestClient, tenant: TenantFixture) -> None:
    csv = b'id,note\n1,"starts a quote\n2,plain\n3,plain\n'
    answer = client.post(
        "/v1/jobs",
        data={"pipeline": json.dumps(SPEC)},
        headers=tenant.headers,
        files={"file": ("r.csv", csv, "text/csv")},
    )
    problem = _refused(answer, 422, "line 2 of the file", "not closed")
    assert problem["errors"][0]["pointer"] == "#/body/file/2"
    _no_jobs()
    fixed = csv.replace(b"quote\n", b'quote"\n')
    accepted = client.post(
        "/v1/jobs",
        data={"pipeline": json.dumps(SPEC)},
        headers=tenant.headers,
        files={"file": ("r.csv", fixed, "text/csv")},
    )
    assert accepted.status_code == 202, accepted.text
    assert accepted.json()["record_count"] == 3


def test_ndjson_refuses_nan_and_deep_lines_as_json_bodies_do(
    client: TestClient, tenant: TenantFixture
) -> None:
    for line, words in (
        (b'{"a": NaN}', ["line 2", "NaN"]),
        (b'{"a": ' + b"[" * 100 + b"]" * 100 + b"}", ["line 2", "nested"]),
    ):
        answer = client.post(
            "/v1/jobs",
            data={"pipeline": json.dumps(SPEC)},
            headers=tenant.headers,
            files={"file": ("r.ndjson", b'{"a": 1}\n' + line + b"\n", "application/x-ndjson")},
        )
        _refused(answer, 422, *words)
    _no_jobs()


@pytest.mark.parametrize(
    "body",
    [
        '{"url": "' + HOOK + '", "event_types": ["*"], "description": ' + DEEP + "}",
        '{"url": "' + HOOK + '", "event_types": ["*"], "description": "\\ud800"}',
        json.dumps({"url": HOOK, "event_types": ["*"]}).encode("utf-16").decode("latin-1"),
    ],
)
def test_other_json_routes_refuse_the_same_bodies(
    client: TestClient, tenant: TenantFixture, body: str
) -> None:
    raw = body.encode("latin-1") if body.startswith("\xff") else body.encode()
    answer = client.post(
        "/v1/webhooks", content=raw, headers={**tenant.headers, "Content-Type": "application/json"}
    )
    assert answer.status_code in {400, 422}, answer.text
    assert answer.headers["content-type"] == "application/problem+json"
    assert client.get("/v1/webhooks", headers=tenant.headers).json()["data"] == []


def test_patch_webhook_description_null_clears_it(
    client: TestClient, tenant: TenantFixture
) -> None:
    created = client.post(
        "/v1/webhooks",
        headers=tenant.headers,
        json={"url": HOOK, "event_types": ["*"], "description": "ops"},
    )
    assert created.status_code == 201, created.text
    url = f"/v1/webhooks/{created.json()['id']}"
    answer = client.patch(url, json={"description": None}, headers=tenant.headers)
    assert answer.status_code == 200, answer.text
    assert answer.json()["description"] == ""
    # url and event_types may be left out but not nulled, and the schema says so
    _refused(client.patch(url, json={"url": None}, headers=tenant.headers), 422)
    schema = client.get("/openapi.json").json()["components"]["schemas"]["WebhookTargetUpdate"]
    assert "null" not in json.dumps(schema["properties"]["url"])
    assert "null" in json.dumps(schema["properties"]["description"])


@pytest.mark.parametrize("value", [True, "100", 100.0])
def test_integer_fields_take_only_integers(
    client: TestClient, tenant: TenantFixture, admin_headers: dict[str, str], value: Any
) -> None:
    key = client.post("/v1/keys", json={"scopes": ["jobs:read"]}, headers=tenant.headers)
    assert key.status_code == 201, key.text
    roll = client.post(
        f"/v1/keys/{key.json()['id']}/roll",
        headers=tenant.headers,
        json={"old_key_expires_in_seconds": value},
    )
    _refused(roll, 422, "old_key_expires_in_seconds")
    quotas = client.put(
        f"/v1/admin/tenants/{tenant.id}/quotas",
        headers=admin_headers,
        json={"max_running_jobs": value},
    )
    _refused(quotas, 422, "max_running_jobs")
    assert (
        client.post(
            f"/v1/keys/{key.json()['id']}/roll",
            headers=tenant.headers,
            json={"old_key_expires_in_seconds": 100},
        ).status_code
        == 201
    )


def test_a_deleted_tenants_sub_resources_follow_one_rule(
    client: TestClient, tenant: TenantFixture, admin_headers: dict[str, str]
) -> None:
    assert client.delete(f"/v1/admin/tenants/{tenant.id}", headers=admin_headers).is_success
    base = f"/v1/admin/tenants/{tenant.id}"
    record = client.get(base, headers=admin_headers)  # the tombstone stays readable
    assert record.status_code == 200
    assert record.json()["status"] == "deleted"
    for answer in (
        client.get(f"{base}/quotas", headers=admin_headers),
        client.put(f"{base}/quotas", json={"max_running_jobs": 3}, headers=admin_headers),
        client.get(f"{base}/keys", headers=admin_headers),
        client.post(f"{base}/keys", json={"scopes": ["jobs:read"]}, headers=admin_headers),
    ):
        _refused(answer, 404, "is deleted")


def _hs256(settings: Settings, claims: str) -> str:
    def b64(raw: bytes) -> str:
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    signing = b64(b'{"alg":"HS256","typ":"JWT"}') + "." + b64(claims.encode())
    secret = settings.jwt_secret().encode()
    signature = hmac.new(secret, signing.encode(), hashlib.sha256).digest()
    return signing + "." + b64(signature)


def test_an_admin_jwt_with_deep_claims_is_401(client: TestClient, api_settings: Settings) -> None:
    now = int(time.time())
    base = (
        f'"sub":"ops","role":"admin","iat":{now},"exp":{now + 60},'
        f'"iss":"{api_settings.auth.jwt_issuer}","aud":"{api_settings.auth.jwt_audience}"'
    )
    for extra in ('"x":' + "[" * 5000 + "]" * 5000, '"x":' + "9" * 5000):
        token = _hs256(api_settings, "{" + base + "," + extra + "}")
        answer = client.get("/v1/admin/tenants", headers={"Authorization": f"Bearer {token}"})
        _refused(answer, 401)
    assert (
        client.get(
            "/v1/admin/tenants",
            headers={"Authorization": f"Bearer {_hs256(api_settings, '{' + base + '}')}"},
        ).status_code
        == 200
    )


@pytest.mark.parametrize(
    ("metadata", "words"),
    [
        ({f"k{i}": i for i in range(51)}, ["at most 50 metadata keys"]),
        ({"k" * 101: 1}, ["metadata keys are 1 to 100 characters"]),
        ({"": 1}, ["metadata keys are 1 to 100 characters"]),
        ({"note": "v" * 1001}, ["longer than 1000 characters"]),
        ({"records": [{"amount": 1}]}, []),  # scalars only: no record content in metadata
        ({"nested": {"a": 1}}, []),
    ],
)
def test_metadata_beyond_its_documented_limit_is_422(
    client: TestClient, tenant: TenantFixture, metadata: dict[str, Any], words: list[str]
) -> None:
    """The README's limit (50 keys of 1-100 characters, scalar values, strings of at most
    1,000 characters: the metadata is stored in clear, for the tenant's references) is
    enforced, in JSON bodies and multipart fields alike, and nothing is written."""
    answer = client.post(
        "/v1/jobs",
        json={"pipeline": SPEC, "records": [{"id": 1}], "metadata": metadata},
        headers=tenant.headers,
    )
    problem = _refused(answer, 422)
    assert any("metadata" in e["pointer"] for e in problem["errors"]), problem
    assert all(any(w in e["detail"] for e in problem["errors"]) for w in words), problem
    multipart = client.post(
        "/v1/jobs",
        data={"pipeline": PIPE, "metadata": json.dumps(metadata)},
        files={"file": ("r.ndjson", b'{"id": 1}\n', "application/x-ndjson")},
        headers=tenant.headers,
    )
    _refused(multipart, 422)
    _no_jobs()
