"""The REST plumbing shared by every endpoint: method, auth, body checks, errors as JSON."""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.core.serializers.json import DjangoJSONEncoder
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt

from api.errors import UNAVAILABLE_ERRORS, ApiError, error_response, unavailable
from realtime.auth import Identity, authenticate_token, bearer_token
from realtime.events import escape_line_breakers

logger = logging.getLogger(__name__)

View = Callable[..., HttpResponse]


def _reject_constant(value: str) -> Any:
    raise ValueError(f"{value} is not valid JSON")


def json_body(request: HttpRequest) -> Any:
    """The request's JSON body, after the size and media type checks of PROTOCOL §2."""
    declared = request.META.get("CONTENT_LENGTH") or "0"
    try:
        declared_bytes = int(declared)
    except ValueError:
        declared_bytes = 0
    if declared_bytes > settings.MAX_REQUEST_BYTES:
        raise ApiError("payload_too_large", "The request body is larger than 64 KiB.")
    if request.content_type != "application/json":
        raise ApiError("unsupported_media_type", "The body must be application/json.")
    try:
        body = request.body
    except RequestDataTooBig:
        raise ApiError("payload_too_large", "The request body is larger than 64 KiB.") from None
    if len(body) > settings.MAX_REQUEST_BYTES:
        raise ApiError("payload_too_large", "The request body is larger than 64 KiB.")
    try:
        return json.loads(body.decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise ApiError("invalid_json", "The body is not valid JSON.") from None


def api_endpoint(*methods: str, auth: bool = True) -> Callable[[View], View]:
    """Wrap a sync view: 405 for other methods, 401 without a valid token, JSON errors."""

    def decorator(view: View) -> View:
        @csrf_exempt
        @functools.wraps(view)
        def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
            try:
                if request.method not in methods:
                    response = error_response(
                        ApiError("method_not_allowed", f"Use {' or '.join(methods)}.")
                    )
                    response["Allow"] = ", ".join(methods)
                    return response
                if auth:
                    request.identity = authenticate(request)  # type: ignore[attr-defined]
                return view(request, *args, **kwargs)
            except ApiError as error:
                return error_response(error)
            except UNAVAILABLE_ERRORS:
                # The database or Redis cannot be reached (a restart, a network cut): the
                # client may retry shortly, and /readyz says which one is down.
                logger.warning("a dependency is unreachable in %s", request.path, exc_info=True)
                return error_response(unavailable())
            except Exception:
                logger.exception("unhandled error in %s", request.path)
                return error_response(ApiError("internal_error", "Something went wrong."))

        return wrapper

    return decorator


def authenticate(request: HttpRequest) -> Identity:
    return authenticate_token(bearer_token(request.headers.get("Authorization")))


class LineSafeJSONEncoder(DjangoJSONEncoder):
    """Django's encoder with U+2028, U+2029 and U+0085 escaped (realtime.events.dumps says
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
