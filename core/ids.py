"""Generation ids: opaque, URL-safe, 128 random bits (PROTOCOL §2)."""

import secrets

_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_RANDOM_BITS = 128  # the contract asks for at least 96; time-free, so ids leak nothing
_LENGTH = 22  # ceil(128 / log2(62))
PREFIX = "gen_"
MAX_LENGTH = len(PREFIX) + _LENGTH


def new_generation_id() -> str:
    number = secrets.randbits(_RANDOM_BITS)
    chars = []
    for _ in range(_LENGTH):
        number, digit = divmod(number, 62)
        chars.append(_ALPHABET[digit])
    return PREFIX + "".join(chars)


def _looks_like(value: object, prefix: str) -> bool:
    return (
        isinstance(value, str)
        and len(value) == len(prefix) + _LENGTH
        and value.startswith(prefix)
        and all(c in _ALPHABET for c in value[len(prefix) :])
    )


def looks_like_generation_id(value: object) -> bool:
    return _looks_like(value, PREFIX)


# Conversation ids: the same alphabet and randomness, their own prefix.
CONVERSATION_PREFIX = "conv_"
CONVERSATION_ID_MAX_LENGTH = len(CONVERSATION_PREFIX) + _LENGTH


def new_conversation_id() -> str:
    return CONVERSATION_PREFIX + new_generation_id()[len(PREFIX) :]


def looks_like_conversation_id(value: object) -> bool:
    return _looks_like(value, CONVERSATION_PREFIX)
