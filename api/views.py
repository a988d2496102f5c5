"""REST endpoints of PROTOCOL §2: thin, each calls one service or selector."""

from __future__ import annotations

from django.contrib.auth import authenticate as password_authenticate
from django.http import HttpRequest, HttpResponse

from api import conversations, selectors, services
from api.errors import ApiError
from api.http import api_endpoint, json_body, json_response
from api.login_throttle import check_login_allowed, client_address, record_login_failure
from api.validation import encodable, parse_generation_params, parse_idempotency_key
from realtime.auth import issue_ticket, issue_token

LIST_LIMIT_DEFAULT = 20
LIST_LIMIT_MAX = 100


@api_endpoint("POST", auth=False)
def auth_token(request: HttpRequest) -> HttpResponse:
    data = json_body(request)
    if not isinstance(data, dict):
        raise ApiError("invalid_request", "The body must be a JSON object.")
    unknown = sorted(set(data) - {"username", "password"})
    errors = {name: "Unknown field." for name in unknown}
    for name in ("username", "password"):
        if not isinstance(data.get(name), str) or not data[name]:
            errors[name] = "A non-empty string is required."
    if errors:
        raise ApiError("invalid_request", "The request has invalid fields.", details=errors)
    for name in ("username", "password"):
        if not encodable(data[name]):
            raise ApiError(
                "invalid_request",
                "The request has invalid fields.",
                details={name: "Text that is valid Unicode (no lone surrogates)."},
            )
    address = client_address(request)
    check_login_allowed(data["username"], address)
    user = password_authenticate(request, username=data["username"], password=data["password"])
    if user is None or not user.is_active:
        record_login_failure(data["username"], address)
        # One message whether or not the user exists, so usernames cannot be probed.
        raise ApiError("unauthorized", "Invalid username or password.")
    token, ttl = issue_token(user.get_username())
    return json_response({"access_token": token, "token_type": "Bearer", "expires_in": ttl})


@api_endpoint("GET", "POST")
def generations(request: HttpRequest) -> HttpResponse:
    if request.method == "POST":
        return _create(request)
    return _list(request)


def _create(request: HttpRequest) -> HttpResponse:
    key = parse_idempotency_key(request.headers.get("Idempotency-Key"))
    data = json_body(request)
    params = parse_generation_params(data)
    generation, created = services.generation_create(
        user=request.identity.user,  # type: ignore[attr-defined]
        params=params,
        idempotency_key=key,
        target=conversations.parse_turn_target(data),
    )
    return json_response(
        generation.to_dict(),
        status=202 if created else 200,
        headers={"Location": f"/api/v1/generations/{generation.id}"},
    )


def _list(request: HttpRequest) -> HttpResponse:
    limit = _list_limit(request)
    rows, next_cursor = selectors.generation_list(
        user=request.identity.user,  # type: ignore[attr-defined]
        limit=limit,
        cursor=request.GET.get("cursor") or None,
    )
    return json_response({"results": [row.to_dict() for row in rows], "next_cursor": next_cursor})


@api_endpoint("GET")
def generation_detail(request: HttpRequest, generation_id: str) -> HttpResponse:
    generation = selectors.generation_for_user(
        user=request.identity.user,  # type: ignore[attr-defined]
        generation_id=generation_id,
    )
    return json_response(generation.to_dict())


@api_endpoint("POST")
def generation_cancel(request: HttpRequest, generation_id: str) -> HttpResponse:
    generation = services.generation_cancel(
        user=request.identity.user,  # type: ignore[attr-defined]
        generation_id=generation_id,
    )
    return json_response(generation.to_dict())


@api_endpoint("POST")
def generation_ticket(request: HttpRequest, generation_id: str) -> HttpResponse:
    user = request.identity.user  # type: ignore[attr-defined]
    generation = selectors.generation_for_user(user=user, generation_id=generation_id)
    ticket, ttl = issue_ticket(user_id=user.pk, generation_id=generation.id)
    return json_response({"ticket": ticket, "expires_in": ttl})


@api_endpoint("GET")
def me(request: HttpRequest) -> HttpResponse:
    identity = request.identity  # type: ignore[attr-defined]
    return json_response(
        {"username": identity.username, "usage": selectors.usage_for(identity.user)}
    )


# --- Conversations (docs/protocol.md "Conversations") ---------------------------------------

CONVERSATION_CREATE_FIELDS = frozenset({"title", "system"})


@api_endpoint("GET", "POST")
def conversation_collection(request: HttpRequest) -> HttpResponse:
    user = request.identity.user  # type: ignore[attr-defined]
    if request.method == "POST":
        data = json_body(request)
        if not isinstance(data, dict):
            raise ApiError("invalid_request", "The body must be a JSON object.")
        unknown = sorted(set(data) - CONVERSATION_CREATE_FIELDS)
        if unknown:
            raise ApiError(
                "invalid_request",
                "The request has invalid fields.",
                details={name: "Unknown field." for name in unknown},
            )
        conversation = conversations.conversation_create(
            user=user,
            title=conversations.parse_title(data.get("title", "")),
            system=conversations.parse_system(data.get("system")),
        )
        return json_response(
            conversations.conversation_view(conversation),
            status=201,
            headers={"Location": f"/api/v1/conversations/{conversation.id}"},
        )
    limit = _list_limit(request)
    rows, next_cursor = conversations.conversation_list(
        user=user, limit=limit, cursor=request.GET.get("cursor") or None
    )
    return json_response({"results": [row.to_dict() for row in rows], "next_cursor": next_cursor})


@api_endpoint("GET", "PATCH", "DELETE")
def conversation_detail(request: HttpRequest, conversation_id: str) -> HttpResponse:
    user = request.identity.user  # type: ignore[attr-defined]
    if request.method == "DELETE":
        conversations.conversation_delete(user=user, conversation_id=conversation_id)
        return HttpResponse(status=204)
    if request.method == "PATCH":
        conversation = conversations.conversation_update(
            user=user, conversation_id=conversation_id, data=json_body(request)
        )
    else:
        conversation = conversations.conversation_for_user(
            user=user, conversation_id=conversation_id
        )
    return json_response(conversations.conversation_view(conversation))


def _list_limit(request: HttpRequest) -> int:
    """`limit` (1 to 100, default 20) of a list endpoint; any other parameter but `cursor`
    is refused."""
    unknown = sorted(set(request.GET) - {"limit", "cursor"})
    if unknown:
        raise ApiError(
            "invalid_request",
            "Unknown query parameters.",
            details={name: "Unknown parameter." for name in unknown},
        )
    raw_limit = request.GET.get("limit", str(LIST_LIMIT_DEFAULT))
    if (
        not (raw_limit.isascii() and raw_limit.isdigit())
        or not 1 <= int(raw_limit) <= LIST_LIMIT_MAX
    ):
        raise ApiError(
            "invalid_request",
            "limit must be an integer from 1 to 100.",
            details={"limit": "An integer from 1 to 100."},
        )
    return int(raw_limit)
