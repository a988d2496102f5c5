"""The REST plumbing shared by every endpoint (django-ninja): the body checks of PROTOCOL §2,
bearer auth, and every failure as the contract's JSON error body, never ninja's own."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.core.serializers.json import DjangoJSONEncoder
from django.http import HttpRequest, HttpResponse, HttpResponseNotAllowed, JsonResponse
from django.urls import URLPattern
from django.views.decorators.csrf import csrf_exempt
from ninja import NinjaAPI
from ninja.errors import AuthenticationError, HttpError, ValidationError
from ninja.parser import Parser
from ninja.security import HttpBearer

from api.auth import Identity, authenticate_token, bearer_token
from api.validation import field_errors
from core.errors import (
    UNAVAILABLE_ERRORS,
    ApiError,
    error_response,
    parse_json,
    payload_too_large,
    unavailable,
)
from jobs.events import escape_line_breakers

logger = logging.getLogger(__name__)


class JsonBodyParser(Parser):
    """The request's JSON body, after the size and media type checks of PROTOCOL §2. Its
    ApiError reaches the client through ninja's HttpError (see `_http_error`)."""

    def parse_body(self, request: HttpRequest) -> Any:
        declared = request.META.get("CONTENT_LENGTH") or "0"
        try:
            declared_bytes = int(declared)
        except ValueError:
            declared_bytes = 0
        if declared_bytes > settings.MAX_REQUEST_BYTES:
            raise payload_too_large()
        if request.content_type != "application/json":
            raise ApiError("unsupported_media_type", "The body must be application/json.")
        try:
            body = request.body
        except RequestDataTooBig:
            raise payload_too_large() from None
        if len(body) > settings.MAX_REQUEST_BYTES:
            raise payload_too_large()
        return parse_json(body, "body")


class BearerAuth(HttpBearer):
    """`Authorization: Bearer <JWT>` (PROTOCOL §1); a refusal is an ApiError (401 with
    WWW-Authenticate), raised rather than returned so its message says why."""

    def __call__(self, request: HttpRequest) -> Identity:
        return self.authenticate(request, request.headers.get("Authorization"))

    def authenticate(self, request: HttpRequest, token: str | None) -> Identity:
        return authenticate_token(bearer_token(token))


def identity(request: HttpRequest) -> Identity:
    """The caller, as BearerAuth found them."""
    found: Identity = request.auth  # type: ignore[attr-defined]
    return found


def install_error_handlers(api: NinjaAPI) -> None:
    """Every failure as the contract's error body: ninja's 422 and plain-text bodies are not."""

    @api.exception_handler(ApiError)
    def _api_error(request: HttpRequest, error: ApiError) -> HttpResponse:
        return error_response(error)

    @api.exception_handler(ValidationError)
    def _validation_error(request: HttpRequest, error: ValidationError) -> HttpResponse:
        items = []
        for item in error.errors:
            source, *field = item["loc"]
            if source == "body":
                field = field[1:]  # the body parameter's name, not a field of the body
                if not field and item["type"] == "missing":
                    # An empty body: ninja does not parse one; the parser says what it lacks.
                    try:
                        api.parser.parse_body(request)
                    except ApiError as refusal:
                        return error_response(refusal)
            items.append({**item, "loc": tuple(field)})
        return error_response(field_errors(items))

    @api.exception_handler(HttpError)
    def _http_error(request: HttpRequest, error: HttpError) -> HttpResponse:
        if isinstance(error.__cause__, ApiError):  # from JsonBodyParser
            return error_response(error.__cause__)
        if isinstance(error, AuthenticationError):
            return error_response(ApiError("unauthorized", "Authentication required."))
        logger.warning("unexpected %s in %s: %s", error.status_code, request.path, error)
        return error_response(ApiError("invalid_request", str(error)))

    @api.exception_handler(RequestDataTooBig)
    def _too_big(request: HttpRequest, error: RequestDataTooBig) -> HttpResponse:
        return error_response(payload_too_large())

    @api.exception_handler(Exception)
    def _unhandled(request: HttpRequest, error: Exception) -> HttpResponse:
        if isinstance(error, UNAVAILABLE_ERRORS):
            # The database or Redis cannot be reached (a restart, a network cut): the client
            # may retry shortly, and /readyz says which one is down.
            logger.warning("a dependency is unreachable in %s", request.path, exc_info=error)
            return error_response(unavailable())
        logger.error("unhandled error in %s", request.path, exc_info=error)
        return error_response(ApiError("internal_error", "Something went wrong."))


def json_method_not_allowed(patterns: list[Any]) -> list[Any]:
    """Ninja answers a method a path lacks with a plain-text 405; the contract's is JSON,
    with the Allow header kept."""
    for pattern in patterns:
        if isinstance(pattern, URLPattern):
            pattern.callback = _with_json_405(pattern.callback)
    return patterns


def _with_json_405(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    @csrf_exempt
    @functools.wraps(view)
    def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        response = view(request, *args, **kwargs)
        if not isinstance(response, HttpResponseNotAllowed):
            return response
        methods = sorted(method.strip() for method in response["Allow"].split(","))
        return error_response(
            ApiError("method_not_allowed", f"Use {' or '.join(methods)}.", allow=", ".join(methods))
        )

    return wrapper


class LineSafeJSONEncoder(DjangoJSONEncoder):
    """Django's encoder with U+2028, U+2029 and U+0085 escaped (jobs.events.dumps says
    why): model output carries them, and a client splitting lines must not cut a value."""

    def encode(self, o: Any) -> str:
        return escape_line_breakers(super().encode(o))


def json_response(
    data: Any, status: int = 200, headers: dict[str, str] | None = None
) -> JsonResponse:
    return JsonResponse(
        data,
        encoder=LineSafeJSONEncoder,
        status=status,
        headers=headers,
        safe=False,
        json_dumps_params={"ensure_ascii": False},
    )
