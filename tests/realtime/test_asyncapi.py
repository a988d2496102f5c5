"""The AsyncAPI document of the WebSocket and SSE protocol: generated from realtime/schemas.py,
served at /api/v1/asyncapi.json without a token, and committed as docs/asyncapi.json."""

from __future__ import annotations

import json
import re

import httpx

from realtime.asyncapi import COMMITTED_PATH, render
from tests.harness import Service
from tests.realtime.wsclient import recv, send, session


def test_the_served_document_is_the_committed_one(anonymous: httpx.Client) -> None:
    response = anonymous.get("/api/v1/asyncapi.json")

    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    # A model changed and docs/asyncapi.json was not written again: `python -m realtime.asyncapi`.
    assert COMMITTED_PATH.read_text() == render()
    assert response.json() == json.loads(COMMITTED_PATH.read_text())


def test_the_document_is_read_only(anonymous: httpx.Client) -> None:
    response = anonymous.post("/api/v1/asyncapi.json", json={})

    assert response.status_code == 405
    assert response.json()["error"]["code"] == "method_not_allowed"
    assert response.headers["allow"] == "GET, HEAD"


def test_every_message_has_its_schema_and_every_operation_its_messages() -> None:
    document = json.loads(COMMITTED_PATH.read_text())
    schemas = document["components"]["schemas"]
    messages = document["components"]["messages"]

    assert document["asyncapi"] == "3.0.0"
    for name, message in messages.items():
        payload = schemas[message["payload"]["$ref"].rsplit("/", 1)[1]]
        assert payload["properties"]["type"]["const"] == message["name"], name
        assert payload["additionalProperties"] is False, name
    for channel_name, channel in document["channels"].items():
        for key, ref in channel["messages"].items():
            assert messages[ref["$ref"].rsplit("/", 1)[1]]["name"] == key, (channel_name, key)
    for operation in document["operations"].values():
        channel = operation["channel"]["$ref"].rsplit("/", 1)[1]
        for ref in operation["messages"] + operation.get("reply", {}).get("messages", []):
            _, _, owner, _, key = ref["$ref"].split("/")
            assert owner == channel and key in document["channels"][channel]["messages"]
    events = set(document["channels"]["events"]["messages"])
    assert events == {"snapshot", "delta", "reasoning", "reset", "done"}


async def test_the_document_lists_every_frame_type_the_server_accepts(service: Service) -> None:
    """The consumer's own list of frame types (its unknown-type error) is the document's."""
    document = json.loads(COMMITTED_PATH.read_text())
    described = {
        operation["messages"][0]["$ref"].rsplit("/", 1)[1]
        for operation in document["operations"].values()
        if operation["action"] == "receive"
    }

    async with session(service) as ws:
        await send(ws, {"type": "no_such_frame", "ref": 1})
        error = await recv(ws)

    assert error["code"] == "invalid_request", error
    accepted = set(re.findall(r"\b[a-z_]+\b", error["details"]["type"])) - {"one", "of"}
    assert accepted == described, error["details"]
