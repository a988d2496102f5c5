"""Validation and sanitising of generation requests (PROTOCOL §6), shared by REST and WebSocket."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from django.conf import settings
from pydantic import ValidationError

from core.errors import ApiError

if TYPE_CHECKING:
    from api.schemas import GenerationCreateRequest

# C0 controls but tab, newline and carriage return; DEL; C1 controls; and lone UTF-16
# surrogates, which JSON can carry ("\ud800") but no UTF-8 database column can store.
_STRIPPED = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff]")

IDEMPOTENCY_KEY_MAX_CHARS = 255


@dataclass(frozen=True)
class GenerationParams:
    prompt: str
    model: str
    system: str | None
    max_tokens: int
    temperature: float | None

    def fingerprint(self) -> str:
        """A hash of the request, to tell a repeat from a different body under the same key."""
        canonical = json.dumps(asdict(self), sort_keys=True, ensure_ascii=True)
        return hashlib.sha256(canonical.encode()).hexdigest()


def sanitize_text(value: str) -> str:
    return _STRIPPED.sub("", value)


def field_errors(errors: Iterable[Mapping[str, Any]]) -> ApiError:
    """Validation errors (pydantic's, with `loc` the field's path in the body or parameters)
    as `invalid_request` with one message per field in `details`; an error about the whole
    body is about its type."""
    details: dict[str, str] = {}
    for item in errors:
        if not item["loc"]:
            return ApiError("invalid_request", "The body must be a JSON object.")
        name = ".".join(str(part) for part in item["loc"])
        details.setdefault(name, _MESSAGES.get(item["type"], item["msg"]))
    return ApiError("invalid_request", "The request has invalid fields.", details=details)


_MESSAGES = {"missing": "This field is required.", "extra_forbidden": "Unknown field."}


def generation_params(body: GenerationCreateRequest) -> GenerationParams:
    """The request with its defaults, after the lengths that have a code of their own."""
    too_long: dict[str, str] = {}
    if len(body.prompt) > settings.MAX_PROMPT_CHARS:
        too_long["prompt"] = f"At most {settings.MAX_PROMPT_CHARS} characters."
    if body.system is not None and len(body.system) > settings.MAX_SYSTEM_CHARS:
        too_long["system"] = f"At most {settings.MAX_SYSTEM_CHARS} characters."
    if too_long:
        raise ApiError("prompt_too_long", "The prompt is too long.", details=too_long)
    return GenerationParams(
        prompt=body.prompt,
        model=body.model or str(settings.DEFAULT_MODEL),
        system=body.system,
        max_tokens=body.max_tokens or int(settings.DEFAULT_MAX_TOKENS),
        temperature=body.temperature,
    )


def parse_generation_params(
    data: Any, *, extra_fields: frozenset[str] = frozenset()
) -> GenerationParams:
    """Check a request given as parsed JSON (the WebSocket `generate` frame), whose
    `extra_fields` belong to the frame rather than the request."""
    from api.schemas import GenerationCreateRequest

    if isinstance(data, dict):
        data = {name: value for name, value in data.items() if name not in extra_fields}
    try:
        body = GenerationCreateRequest.model_validate(data)
    except ValidationError as error:
        raise field_errors(error.errors(include_url=False)) from None
    return generation_params(body)


def parse_idempotency_key(value: Any) -> str | None:
    if value is None:
        return None
    if (
        not isinstance(value, str)
        or not 1 <= len(value) <= IDEMPOTENCY_KEY_MAX_CHARS
        or _STRIPPED.search(value)
    ):
        raise ApiError(
            "invalid_request",
            "The idempotency key must be 1 to 255 printable characters.",
            details={"idempotency_key": "1 to 255 printable characters."},
        )
    return value


def encodable(text: str) -> bool:
    """Whether `text` can be encoded as UTF-8 (and so sent or stored): a lone surrogate, which
    JSON's \\uD800 escapes can carry, cannot."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
