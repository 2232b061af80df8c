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
            (requirement,) = op["security"]
            expected = "AdminJWT" if path.startswith("/v1/admin") else "ApiKey"
            assert set(requirement) == {expected}, (method, path)
            for status in ("401", "403", "404", "422"):
                content = op["responses"][status]["content"]
                assert list(content) == ["application/problem+json"], (method, path, status)


def test_docs_page_and_health_endpoints(client: TestClient) -> None:
    docs = client.get("/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json() == {"status": "ok"}
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
