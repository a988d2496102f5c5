"""The OpenAPI document at /api/v1/schema is generated from api.schemas (django-ninja): it
describes the endpoints that really exist, equals the committed docs/openapi.json, and the
models it comes from accept what the service really sends."""

from __future__ import annotations

import json
import re
from typing import get_args

import httpx
import pytest

from api import schemas
from core.errors import STATUS_BY_CODE
from tests.api.support import assert_error
from tests.conftest import create, wait_terminal
from tests.harness import ROOT

COMMITTED = ROOT / "docs" / "openapi.json"
REGENERATE = (
    "python manage.py export_openapi_schema --api api.views.api --indent 2 --sorted "
    "--output docs/openapi.json"
)


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


def test_served_schema_equals_the_committed_document(anonymous: httpx.Client) -> None:
    served = anonymous.get("/api/v1/schema").json()

    assert served == json.loads(COMMITTED.read_text()), f"regenerate it: {REGENERATE}"


def test_interactive_docs_are_served_beside_the_schema(anonymous: httpx.Client) -> None:
    response = anonymous.get("/api/v1/docs")

    assert response.status_code == 200
    assert "text/html" in response.headers["content-type"]
    assert "/api/v1/schema" in response.text
    # Served by the service itself (no CDN): the page works offline and under a strict CSP.
    scripts = re.findall(r'<script src="([^"]+)"', response.text)
    assert scripts
    for script in scripts:
        assert anonymous.get(script).status_code == 200, script


def test_a_real_generation_has_exactly_the_schema_fields(
    anonymous: httpx.Client, alice: httpx.Client
) -> None:
    schema = anonymous.get("/api/v1/schema").json()["components"]["schemas"]["Generation"]
    generation = create(alice, "schema check [fake tokens=3]")

    assert set(generation) == set(schema["required"]) == set(schema["properties"])


def test_the_models_accept_what_the_service_sends(alice: httpx.Client) -> None:
    created = create(alice, "models check [fake tokens=3]")
    final = wait_terminal(alice, created["id"])
    conversation = alice.get(f"/api/v1/conversations/{final['conversation_id']}").json()

    schemas.Generation.model_validate(created)
    assert schemas.Generation.model_validate(final).usage is not None
    schemas.GenerationPage.model_validate(alice.get("/api/v1/generations?limit=2").json())
    schemas.ConversationDetail.model_validate(conversation)
    schemas.ConversationPage.model_validate(alice.get("/api/v1/conversations").json())
    schemas.Me.model_validate(alice.get("/api/v1/me").json())
    schemas.Ticket.model_validate(alice.post(f"/api/v1/generations/{final['id']}/ticket").json())
    schemas.ErrorBody.model_validate(alice.get("/api/v1/generations/gen_nope").json())


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"prompt": 5}, "prompt"),
        ({"prompt": "hi", "max_tokens": True}, "max_tokens"),
        ({"prompt": "hi", "temperature": "1"}, "temperature"),
        ({"prompt": "hi", "top_p": 1}, "top_p"),
        ({}, "prompt"),
    ],
)
def test_model_validation_errors_use_the_contract_body_not_a_422(
    alice: httpx.Client, body: dict[str, object], field: str
) -> None:
    details = assert_error(alice.post("/api/v1/generations", json=body), 400, "invalid_request")

    assert set(details) == {field}


def test_the_error_code_model_names_every_code_of_the_contract() -> None:
    assert set(get_args(schemas.ErrorCode)) == set(STATUS_BY_CODE)
