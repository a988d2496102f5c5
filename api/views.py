"""REST endpoints of PROTOCOL §2 and docs/protocol.md, served by django-ninja from the models
of api.schemas: thin, each calls one service or selector.

Responses are written by `json_response` from the same dicts as the WebSocket's (the bytes of
the contract); the `response=` models document them in the OpenAPI document, and the tests
check every response against that document (tests/api/test_schemathesis.py).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Annotated, Any

from django.contrib.auth import authenticate as password_authenticate
from django.http import HttpRequest, HttpResponse
from ninja import NinjaAPI, Router
from ninja.params import functions as param
from pydantic import BeforeValidator
from pydantic_core import PydanticCustomError

from api import conversations, services
from api.auth import issue_ticket, issue_token
from api.http import (
    BearerAuth,
    JsonBodyParser,
    identity,
    install_error_handlers,
    json_response,
)
from api.login_throttle import check_login_allowed, client_address, record_login_failure
from api.schemas import (
    ConversationCreateRequest,
    ConversationDetail,
    ConversationPage,
    ConversationUpdateRequest,
    ErrorBody,
    Generation,
    GenerationCreateRequest,
    GenerationPage,
    Me,
    Ticket,
    Token,
    TokenRequest,
)
from api.validation import generation_params, parse_idempotency_key
from core import selectors
from core.errors import ApiError
from jobs.eventlog import generation_now

LIST_LIMIT_DEFAULT = 20
LIST_LIMIT_MAX = 100

_HEADERS = {
    401: {"WWW-Authenticate": {"schema": {"type": "string"}}},
    429: {"Retry-After": {"schema": {"type": "integer"}, "description": "Seconds."}},
    503: {"Retry-After": {"schema": {"type": "integer"}, "description": "Seconds."}},
}
# What any authenticated endpoint may answer; a body adds 400, 413 and 415.
_ANY = (401, 405, 500, 503)
_BODY = (400, 413, 415)


def documented(
    ok: dict[int, Any],
    *errors: int,
    headers: dict[int, dict[str, Any]] | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The `response` and `openapi_extra` of an operation: its success bodies, the error
    statuses it may answer (each with the error body), the headers that come with them, and
    `extra` for the OpenAPI operation (its `responses` merged per status)."""
    codes = sorted(set(errors) | set(_ANY))
    all_headers = {
        **{code: _HEADERS[code] for code in codes if code in _HEADERS},
        **(headers or {}),
    }
    # Keyed by int, as ninja keys its own (a "202" would not merge with 202).
    responses: dict[int, Any] = {code: {"headers": value} for code, value in all_headers.items()}
    extra = dict(extra or {})
    for code, value in extra.pop("responses", {}).items():
        responses[code] = {**responses.get(code, {}), **value}
    return {
        "response": {**ok, tuple(codes): ErrorBody},
        "openapi_extra": {**extra, "responses": responses},
    }


def _page(
    request: HttpRequest,
    list_rows: Callable[..., tuple[Sequence[Any], str | None]],
    limit: int,
    cursor: str | None,
    body: Callable[[Any], dict[str, Any]] = lambda row: row.to_dict(),
) -> HttpResponse:
    """One page of the caller's rows, newest first (core.selectors.keyset_page). A list
    endpoint takes `limit` and `cursor` only: another parameter is refused rather than ignored
    (a typo must not silently return the default page)."""
    unknown = sorted(set(request.GET) - {"limit", "cursor"})
    if unknown:
        raise ApiError(
            "invalid_request",
            "Unknown query parameters.",
            details={name: "Unknown parameter." for name in unknown},
        )
    rows, next_cursor = list_rows(user=identity(request).user, limit=limit, cursor=cursor or None)
    return json_response({"results": [body(row) for row in rows], "next_cursor": next_cursor})


def _ascii_digits(value: Any) -> Any:
    # pydantic would also read "+5", " 5", "5_0" and "5.0" as integers; the contract's
    # limit is plain digits (docs/protocol.md, "Choices").
    if isinstance(value, str) and not (value.isascii() and value.isdigit()):
        raise PydanticCustomError("invalid", "An integer from 1 to 100.")
    return value


Limit = Annotated[
    int,
    param.Query(ge=1, le=LIST_LIMIT_MAX),
    BeforeValidator(_ascii_digits),
]
Cursor = Annotated[str | None, param.Query(description="next_cursor of the previous page.")]
LOCATION = {"Location": {"schema": {"type": "string"}}}
# One Server-Sent Event (PROTOCOL §4): `id` is its seq, `data` the event object as JSON text.
SSE_EVENT = {
    "type": "object",
    "required": ["id", "event", "data"],
    "properties": {
        "id": {"type": "string", "pattern": "^[0-9]+$"},
        "event": {"enum": ["snapshot", "delta", "reasoning", "reset", "done"]},
        "data": {"type": "string", "contentMediaType": "application/json"},
    },
}


# --- Sign-in and the caller -------------------------------------------------------------------

accounts = Router(tags=["account"])


@accounts.post(
    "/auth/token",
    auth=None,
    summary="Exchange a username and password for an access token",
    **documented({200: Token}, *_BODY, 429),
)
def auth_token(request: HttpRequest, body: TokenRequest) -> HttpResponse:
    address = client_address(request)
    check_login_allowed(body.username, address)
    user = password_authenticate(request, username=body.username, password=body.password)
    if user is None or not user.is_active:
        record_login_failure(body.username, address)
        # One message whether or not the user exists, so usernames cannot be probed.
        raise ApiError("unauthorized", "Invalid username or password.")
    token, ttl = issue_token(user.get_username())
    return json_response({"access_token": token, "token_type": "Bearer", "expires_in": ttl})


@accounts.get("/me", summary="The caller and their usage", **documented({200: Me}))
def me(request: HttpRequest) -> HttpResponse:
    caller = identity(request)
    return json_response({"username": caller.username, "usage": selectors.usage_for(caller.user)})


# --- Generations ------------------------------------------------------------------------------

generations = Router(tags=["generations"])


@generations.post(
    "/generations",
    summary="Create a generation",
    **documented(
        {202: Generation, 200: Generation}, *_BODY, 404, 409, 429, headers={202: LOCATION}
    ),
)
def generation_create(
    request: HttpRequest,
    body: GenerationCreateRequest,
    idempotency_key: Annotated[
        str | None,
        param.Header(alias="Idempotency-Key", description="1 to 255 printable characters."),
    ] = None,
) -> HttpResponse:
    generation, created = services.generation_create(
        user=identity(request).user,
        params=generation_params(body),
        idempotency_key=parse_idempotency_key(idempotency_key),
        target=conversations.parse_turn_target(
            body.model_dump(include={"conversation_id", "parent_id"}, exclude_unset=True)
        ),
    )
    return json_response(
        generation_now(generation),
        status=202 if created else 200,
        headers={"Location": f"/api/v1/generations/{generation.id}"},
    )


@generations.get(
    "/generations",
    summary="The caller's generations, newest first",
    **documented({200: GenerationPage}, 400),
)
def generation_list(
    request: HttpRequest, limit: Limit = LIST_LIMIT_DEFAULT, cursor: Cursor = None
) -> HttpResponse:
    return _page(request, selectors.generation_list, limit, cursor, generation_now)


@generations.get(
    "/generations/{generation_id}", summary="A generation", **documented({200: Generation}, 404)
)
def generation_detail(request: HttpRequest, generation_id: str) -> HttpResponse:
    generation = selectors.generation_for_user(
        user=identity(request).user, generation_id=generation_id
    )
    return json_response(generation_now(generation))


@generations.post(
    "/generations/{generation_id}/cancel",
    summary="Cancel a generation (a terminal one is returned unchanged)",
    **documented({200: Generation}, 404),
)
def generation_cancel(request: HttpRequest, generation_id: str) -> HttpResponse:
    generation = services.generation_cancel(
        user=identity(request).user, generation_id=generation_id
    )
    return json_response(generation_now(generation))


@generations.post(
    "/generations/{generation_id}/ticket",
    summary="A short-lived credential for this generation's events (EventSource)",
    **documented({200: Ticket}, 404),
)
def generation_ticket(request: HttpRequest, generation_id: str) -> HttpResponse:
    user = identity(request).user
    generation = selectors.generation_for_user(user=user, generation_id=generation_id)
    ticket, ttl = issue_ticket(user_id=user.pk, generation_id=generation.id)
    return json_response({"ticket": ticket, "expires_in": ttl})


@generations.get(
    "/generations/{generation_id}/events",
    auth=None,
    summary="The generation's events as Server-Sent Events (PROTOCOL §4)",
    description="Served by realtime.sse (project/urls.py routes it first); described here.",
    **documented(
        {200: None, 204: None},
        400,
        404,
        429,
        extra={
            "security": [{"BearerAuth": []}, {}],
            "responses": {
                200: {
                    "description": "`id: <seq>`, `event: <type>`, `data: <event JSON>` per event",
                    "content": {"text/event-stream": {"schema": SSE_EVENT}},
                },
                204: {"description": "The position is at or after `done`: nothing follows."},
            },
        },
    ),
)
def generation_events(
    request: HttpRequest,
    generation_id: str,
    after: Annotated[int | None, param.Query(ge=0, description="Resume after this seq.")] = None,
    ticket: Annotated[
        str | None, param.Query(description="From POST .../ticket, instead of a token.")
    ] = None,
    last_event_id: Annotated[str | None, param.Header(alias="Last-Event-ID")] = None,
) -> HttpResponse:
    raise ApiError("internal_error", "Served by realtime.sse.generation_events.")


# --- Conversations (docs/protocol.md "Conversations") ----------------------------------------

conversation_routes = Router(tags=["conversations"])


@conversation_routes.post(
    "/conversations",
    summary="Start a conversation",
    **documented({201: ConversationDetail}, *_BODY, headers={201: LOCATION}),
)
def conversation_create(request: HttpRequest, body: ConversationCreateRequest) -> HttpResponse:
    conversation = conversations.conversation_create(
        user=identity(request).user, title=body.title, system=body.system
    )
    return json_response(
        conversations.conversation_view(conversation),
        status=201,
        headers={"Location": f"/api/v1/conversations/{conversation.id}"},
    )


@conversation_routes.get(
    "/conversations",
    summary="The caller's conversations, newest first",
    **documented({200: ConversationPage}, 400),
)
def conversation_list(
    request: HttpRequest, limit: Limit = LIST_LIMIT_DEFAULT, cursor: Cursor = None
) -> HttpResponse:
    return _page(request, conversations.conversation_list, limit, cursor)


@conversation_routes.get(
    "/conversations/{conversation_id}",
    summary="A conversation with its turns and branches",
    **documented({200: ConversationDetail}, 404),
)
def conversation_detail(request: HttpRequest, conversation_id: str) -> HttpResponse:
    conversation = conversations.conversation_for_user(
        user=identity(request).user, conversation_id=conversation_id
    )
    return json_response(conversations.conversation_view(conversation))


@conversation_routes.patch(
    "/conversations/{conversation_id}",
    summary="Rename, change the system prompt, or switch branch",
    **documented({200: ConversationDetail}, *_BODY, 404),
)
def conversation_update(
    request: HttpRequest, conversation_id: str, body: ConversationUpdateRequest
) -> HttpResponse:
    conversation = conversations.conversation_update(
        user=identity(request).user,
        conversation_id=conversation_id,
        changes=body.model_dump(exclude_unset=True),
    )
    return json_response(conversations.conversation_view(conversation))


@conversation_routes.delete(
    "/conversations/{conversation_id}",
    summary="Delete a conversation, its turns and their events",
    **documented({204: None}, 404),
)
def conversation_delete(request: HttpRequest, conversation_id: str) -> HttpResponse:
    conversations.conversation_delete(user=identity(request).user, conversation_id=conversation_id)
    return HttpResponse(status=204)


api = NinjaAPI(
    title="LLM stream backend",
    version="1",
    description="The REST part of the wire contract (PROTOCOL.md, docs/protocol.md).",
    openapi_url="/schema",
    docs_url="/docs",
    auth=BearerAuth(),
    parser=JsonBodyParser(),
    urls_namespace="api-v1",
)
install_error_handlers(api)
api.add_router("", accounts)
api.add_router("", generations)
api.add_router("", conversation_routes)
