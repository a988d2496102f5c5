"""The AsyncAPI 3.0 document of the WebSocket (/ws/v1) and SSE protocol, generated from the
frame models of realtime/schemas.py and served at /api/v1/asyncapi.json.

docs/asyncapi.json is this document, committed; `python -m realtime.asyncapi` writes it again
after a model changed (a test fails until it is the same as what the service serves).
"""

from __future__ import annotations

import json
import sys
from functools import cache
from pathlib import Path
from typing import Any

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from pydantic.json_schema import models_json_schema

from core.errors import ApiError, error_response
from realtime import schemas

SCHEMAS_REF = "#/components/schemas/{model}"
COMMITTED_PATH = Path(__file__).resolve().parent.parent / "docs" / "asyncapi.json"

# What the server sends on its own: a subscription's events, a followed conversation's turns
# and changes, and the error before a close it decided (token expired, account deactivated).
PUSHED: tuple[type[schemas.Frame], ...] = (
    *schemas.EVENT_MODELS,
    schemas.TurnFrame,
    schemas.ConversationUpdatedFrame,
    schemas.ConversationDeletedFrame,
    schemas.ErrorFrame,
)

WEBSOCKET_DESCRIPTION = """\
One connection multiplexes any number of generations (PROTOCOL §5, docs/protocol.md). Every \
frame is one JSON text frame; the first must be `auth` within WS_AUTH_TIMEOUT. Each client \
frame may carry `ref`, echoed in its reply. Events carry the generation `id`.

Close codes: 4401 unauthorized or token expired, 4408 no `auth` in time, 4008 slow consumer, \
4429 too many connections for this user, 1003 a binary frame, 1009 a frame over 64 KiB, \
1013 storage unreachable during the first `auth` (reconnect with backoff), 1001 server \
shutting down."""

SSE_DESCRIPTION = """\
The events of one generation as Server-Sent Events (PROTOCOL §4): each is `id: <seq>`, \
`event: <type>`, `data: <the event object below, on one line>`, then a blank line. `retry: \
1000` is sent once and a `: ping` comment while idle. The position comes from Last-Event-ID, \
else `?after=`, else 0; a position at or after `done` gets 204 No Content. Auth: \
`Authorization: Bearer <JWT>`, or `?ticket=` from POST \
/api/v1/generations/{generation_id}/ticket."""


def _type_name(model: type[schemas.Frame]) -> str:
    name: str = model.model_fields["type"].annotation.__args__[0]  # type: ignore[union-attr]
    return name


def _summary(model: type[schemas.Frame]) -> str:
    return (model.__doc__ or "").strip().split("\n\n")[0].replace("\n", " ")


def _message(model: type[schemas.Frame]) -> dict[str, Any]:
    message: dict[str, Any] = {
        "name": _type_name(model),
        "title": _type_name(model),
        "payload": {"$ref": SCHEMAS_REF.format(model=model.__name__)},
    }
    if summary := _summary(model):
        message["summary"] = summary
    return message


def _refs(channel: str, models: tuple[type[schemas.Frame], ...]) -> list[dict[str, str]]:
    return [{"$ref": f"#/channels/{channel}/messages/{_type_name(model)}"} for model in models]


def _messages(models: tuple[type[schemas.Frame], ...]) -> dict[str, Any]:
    return {
        _type_name(model): {"$ref": f"#/components/messages/{model.__name__}"} for model in models
    }


def _server(protocol: str, description: str) -> dict[str, Any]:
    return {
        "host": "{host}",
        "protocol": protocol,
        "description": description,
        "variables": {"host": {"default": "localhost:8000"}},
    }


@cache
def document() -> dict[str, Any]:
    websocket_models = schemas.CLIENT_FRAME_MODELS + schemas.SERVER_FRAME_MODELS
    _, definitions = models_json_schema(
        [(model, "validation") for model in websocket_models], ref_template=SCHEMAS_REF
    )
    operations: dict[str, Any] = {}
    for request, reply in schemas.REPLIES.items():
        operations[_type_name(request)] = {
            "action": "receive",
            "channel": {"$ref": "#/channels/websocket"},
            "summary": _summary(request) or f"The `{_type_name(request)}` frame.",
            "messages": _refs("websocket", (request,)),
            "reply": {
                "channel": {"$ref": "#/channels/websocket"},
                "messages": _refs("websocket", (reply, schemas.ErrorFrame)),
            },
        }
    operations["push"] = {
        "action": "send",
        "channel": {"$ref": "#/channels/websocket"},
        "summary": "Events of the subscribed generations, turns and changes of the followed "
        "conversations, and the error before a close the server decided.",
        "messages": _refs("websocket", PUSHED),
    }
    operations["events"] = {
        "action": "send",
        "channel": {"$ref": "#/channels/events"},
        "summary": "One generation's events, until `done`.",
        "messages": _refs("events", schemas.EVENT_MODELS),
    }
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "LLM stream service: WebSocket and Server-Sent Events",
            "version": "1.1.0",
            "description": "The realtime half of the wire contract (docs/protocol.md), "
            "generated from realtime/schemas.py. REST is described by the OpenAPI document.",
        },
        "defaultContentType": "application/json",
        "servers": {
            "websocket": _server("ws", "wss behind TLS."),
            "http": _server("http", "https behind TLS."),
        },
        "channels": {
            "websocket": {
                "address": "/ws/v1",
                "title": "WebSocket",
                "description": WEBSOCKET_DESCRIPTION,
                "servers": [{"$ref": "#/servers/websocket"}],
                "messages": _messages(websocket_models),
            },
            "events": {
                "address": "/api/v1/generations/{generation_id}/events",
                "title": "Server-Sent Events",
                "description": SSE_DESCRIPTION,
                "servers": [{"$ref": "#/servers/http"}],
                "parameters": {"generation_id": {"description": "The generation's id."}},
                "messages": _messages(schemas.EVENT_MODELS),
            },
        },
        "operations": operations,
        "components": {
            "schemas": definitions["$defs"],
            "messages": {model.__name__: _message(model) for model in websocket_models},
        },
    }


@csrf_exempt  # no cookie or token is used, so CSRF does not apply: a POST gets the JSON 405
def asyncapi_view(request: HttpRequest) -> HttpResponse:
    """Public, like the OpenAPI document: it describes the protocol, not anyone's data."""
    if request.method not in ("GET", "HEAD"):
        return error_response(ApiError("method_not_allowed", "Use GET.", allow="GET, HEAD"))
    return JsonResponse(document(), json_dumps_params={"ensure_ascii": False})


def render() -> str:
    """The committed file's text."""
    return json.dumps(document(), indent=2, ensure_ascii=False) + "\n"


if __name__ == "__main__":
    COMMITTED_PATH.write_text(render())
    sys.stdout.write(f"wrote {COMMITTED_PATH}\n")
