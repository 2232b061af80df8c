"""Every tenant operation of the OpenAPI document has an SDK method, sync and async."""

from __future__ import annotations

import inspect

from fastapi.testclient import TestClient

from celeriac.client import _async, _sync


def _sdk_operations(module: object) -> set[tuple[str, str]]:
    found = set()
    for _, cls in inspect.getmembers(module, inspect.isclass):
        if cls.__module__ != getattr(module, "__name__", None):
            continue
        for _, member in inspect.getmembers(cls):
            marked = getattr(member, "__celeriac_operation__", None)
            if marked is not None:
                found.add(marked)
    return found


def test_every_tenant_operation_has_a_method_in_both_clients(client: TestClient) -> None:
    document = client.get("/openapi.json").json()
    tenant_operations = {
        (method.upper(), path)
        for path, item in document["paths"].items()
        for method, op in item.items()
        if any("ApiKey" in requirement for requirement in op.get("security", []))
    }
    assert len(tenant_operations) >= 30
    for module in (_sync, _async):
        missing = tenant_operations - _sdk_operations(module)
        assert not missing, f"{module.__name__} has no method for {sorted(missing)}"
        # And no SDK method calls an operation the API does not have.
        assert _sdk_operations(module) <= tenant_operations
