"""The OpenAPI document describes every route with its authentication and its errors."""

from __future__ import annotations

import pytest
from conftest import clear_process_caches
from fastapi.testclient import TestClient

from celeriac.platform.api.app import create_app
from celeriac.platform.settings import Settings


def test_every_operation_documents_auth_and_problem_answers(client: TestClient) -> None:
    document = client.get("/openapi.json").json()
    schemes = document["components"]["securitySchemes"]
    assert {"ApiKey", "AdminJWT"} <= set(schemes)
    operations = [
        (path, method, op)
        for path, item in document["paths"].items()
        for method, op in item.items()
    ]
    assert len(operations) >= 25
    for path, method, op in operations:
        assert op.get("summary") or op.get("description"), (method, path)
        if path.startswith("/v1/"):
            schemes_of_op = {name for requirement in op["security"] for name in requirement}
            # Admin routes take a JWT; tenant routes an API key; usage either (billing's
            # JWT reads every tenant's, a tenant's key with usage:read its own).
            if path.startswith("/v1/usage"):
                assert schemes_of_op == {"AdminJWT", "ApiKey"}, (method, path)
                expected = "ApiKey"
            else:
                expected = "AdminJWT" if path.startswith("/v1/admin") else "ApiKey"
                assert schemes_of_op == {expected}, (method, path)
            statuses = ["401", "403", "404", "422"] + (["429"] if expected == "ApiKey" else [])
            for status in statuses:
                content = op["responses"][status]["content"]
                assert list(content) == ["application/problem+json"], (method, path, status)


def test_docs_page_and_health_endpoints(client: TestClient) -> None:
    docs = client.get("/docs")
    assert docs.status_code == 200
    assert "swagger" in docs.text.lower()
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json() == {"status": "ok"}
    assert ready.headers["X-Request-ID"]


def test_request_id_is_echoed_or_made(client: TestClient) -> None:
    mine = client.get("/healthz", headers={"X-Request-ID": "trace-123"})
    assert mine.headers["X-Request-ID"] == "trace-123"
    unknown = client.get("/nope", headers={"X-Request-ID": "x" * 500})
    assert unknown.status_code == 404
    assert unknown.headers["content-type"] == "application/problem+json"
    assert len(unknown.headers["X-Request-ID"]) == 32
    assert unknown.json()["request_id"] == unknown.headers["X-Request-ID"]


def test_readiness_reports_an_unreachable_database(
    api_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A real database URL on which nothing listens.
    monkeypatch.setenv("CELERIAC_DATABASE_URL", "postgresql+psycopg://nobody@127.0.0.1:9/x")
    clear_process_caches()
    with TestClient(create_app()) as unready:
        answer = unready.get("/readyz")
        assert unready.get("/healthz").status_code == 200
    assert answer.status_code == 503
    assert answer.json()["problems"] == ["database: OperationalError"]


def test_an_unhandled_error_is_a_problem_with_the_request_id(api_settings: Settings) -> None:
    app = create_app(api_settings)

    @app.get("/v1/boom", include_in_schema=False)
    def boom() -> None:
        raise RuntimeError("a bug")

    with TestClient(app, raise_server_exceptions=False) as client:
        answer = client.get("/v1/boom", headers={"X-Request-ID": "trace-me"})
    assert answer.status_code == 500
    assert answer.headers["content-type"] == "application/problem+json"
    assert answer.headers["X-Request-ID"] == "trace-me" == answer.json()["request_id"]
    assert "a bug" not in answer.text  # no internals leak


def test_text_the_database_cannot_store_is_422_and_changes_nothing(
    client: TestClient, admin_headers: dict[str, str]
) -> None:
    answer = client.post(
        "/v1/admin/tenants", json={"slug": "nul-tenant", "name": "a\u0000b"}, headers=admin_headers
    )
    assert answer.status_code == 422, answer.text
    assert answer.headers["content-type"] == "application/problem+json"
    listed = client.get("/v1/admin/tenants", headers=admin_headers).json()["data"]
    assert "nul-tenant" not in [t["slug"] for t in listed]
