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
