"""The OpenAPI schema at /api/v1/schema describes the endpoints that really exist."""

from __future__ import annotations

import httpx

from tests.conftest import create


def test_schema_lists_every_rest_endpoint(anonymous: httpx.Client) -> None:
    response = anonymous.get("/api/v1/schema")

    assert response.status_code == 200
    schema = response.json()
    assert schema["openapi"].startswith("3.")
    assert set(schema["paths"]) == {
        "/api/v1/auth/token",
        "/api/v1/generations",
        "/api/v1/generations/{generation_id}",
        "/api/v1/generations/{generation_id}/cancel",
        "/api/v1/generations/{generation_id}/ticket",
        "/api/v1/generations/{generation_id}/events",
        "/api/v1/me",
        "/api/v1/conversations",
        "/api/v1/conversations/{conversation_id}",
    }


def test_a_real_generation_has_exactly_the_schema_fields(
    anonymous: httpx.Client, alice: httpx.Client
) -> None:
    schema = anonymous.get("/api/v1/schema").json()["components"]["schemas"]["Generation"]
    generation = create(alice, "schema check [fake tokens=3]")

    assert set(generation) == set(schema["required"]) == set(schema["properties"])
