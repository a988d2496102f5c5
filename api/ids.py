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


def looks_like_generation_id(value: object) -> bool:
    return (
        isinstance(value, str)
        and len(value) == MAX_LENGTH
        and value.startswith(PREFIX)
        and all(c in _ALPHABET for c in value[len(PREFIX) :])
    )


# Conversation ids: the same alphabet and randomness, their own prefix.
CONVERSATION_PREFIX = "conv_"
CONVERSATION_ID_MAX_LENGTH = len(CONVERSATION_PREFIX) + _LENGTH


def new_conversation_id() -> str:
    return CONVERSATION_PREFIX + new_generation_id()[len(PREFIX) :]


def looks_like_conversation_id(value: object) -> bool:
    return (
        isinstance(value, str)
        and len(value) == CONVERSATION_ID_MAX_LENGTH
        and value.startswith(CONVERSATION_PREFIX)
        and all(c in _ALPHABET for c in value[len(CONVERSATION_PREFIX) :])
    )
