"""Validation and sanitising of generation requests (PROTOCOL §6), shared by REST and WebSocket."""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import asdict, dataclass
from typing import Any

from django.conf import settings

from api.errors import ApiError

# C0 controls but tab, newline and carriage return; DEL; C1 controls; and lone UTF-16
# surrogates, which JSON can carry ("\ud800") but no UTF-8 database column can store.
_STRIPPED = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff]")

GENERATION_FIELDS = frozenset({"prompt", "model", "system", "max_tokens", "temperature"})
# Where the turn goes in a conversation (api.conversations.parse_turn_target reads them).
GENERATION_FIELDS |= {"conversation_id", "parent_id"}
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


def parse_generation_params(
    data: Any, *, extra_fields: frozenset[str] = frozenset()
) -> GenerationParams:
    """Check a request body; raise ApiError with per-field details on the first request error."""
    if not isinstance(data, dict):
        raise ApiError("invalid_request", "The body must be a JSON object.")
    errors: dict[str, str] = {}
    unknown = sorted(set(data) - GENERATION_FIELDS - extra_fields)
    for name in unknown:
        errors[name] = "Unknown field."

    prompt_raw = data.get("prompt")
    prompt = ""
    if "prompt" not in data:
        errors["prompt"] = "This field is required."
    elif not isinstance(prompt_raw, str):
        errors["prompt"] = "Must be a string."
    else:
        prompt = sanitize_text(prompt_raw)
        if not prompt.strip():
            errors["prompt"] = "Must not be empty."

    model = data.get("model", None)
    if model is None:
        model = settings.DEFAULT_MODEL
    elif not isinstance(model, str):
        errors["model"] = "Must be a string."
    elif model not in settings.ALLOWED_MODELS:
        errors["model"] = "Must be one of: " + ", ".join(settings.ALLOWED_MODELS) + "."

    system_raw = data.get("system", None)
    system: str | None = None
    if system_raw is not None:
        if not isinstance(system_raw, str):
            errors["system"] = "Must be a string or null."
        else:
            system = sanitize_text(system_raw) or None

    max_tokens = data.get("max_tokens", None)
    if max_tokens is None:
        max_tokens = settings.DEFAULT_MAX_TOKENS
    elif isinstance(max_tokens, bool) or not isinstance(max_tokens, int):
        errors["max_tokens"] = "Must be an integer."
    elif not 1 <= max_tokens <= settings.MAX_OUTPUT_TOKENS:
        errors["max_tokens"] = f"Must be from 1 to {settings.MAX_OUTPUT_TOKENS}."

    temperature = data.get("temperature", None)
    if temperature is not None:
        if isinstance(temperature, bool) or not isinstance(temperature, int | float):
            errors["temperature"] = "Must be a number or null."
        elif not math.isfinite(temperature) or not 0 <= temperature <= 2:
            errors["temperature"] = "Must be from 0 to 2."
        else:
            temperature = float(temperature)

    if errors:
        raise ApiError("invalid_request", "The request has invalid fields.", details=errors)

    too_long: dict[str, str] = {}
    if len(prompt) > settings.MAX_PROMPT_CHARS:
        too_long["prompt"] = f"At most {settings.MAX_PROMPT_CHARS} characters."
    if system is not None and len(system) > settings.MAX_SYSTEM_CHARS:
        too_long["system"] = f"At most {settings.MAX_SYSTEM_CHARS} characters."
    if too_long:
        raise ApiError("prompt_too_long", "The prompt is too long.", details=too_long)

    return GenerationParams(
        prompt=prompt,
        model=str(model),
        system=system,
        max_tokens=int(max_tokens),
        temperature=temperature,
    )


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
