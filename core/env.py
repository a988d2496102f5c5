"""Typed readers for environment variables.

Every setting of the service comes from the environment through these helpers. A value that
cannot be parsed stops the process at start with a message naming the variable: a typo in
production must not silently fall back to a default.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


class ConfigError(Exception):
    """A malformed environment variable; raised at start so the process refuses to run."""


def _read(name: str, default: T, parse: Callable[[str], T], expected: str) -> T:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        return parse(raw.strip())
    except (ValueError, TypeError):
        raise ConfigError(f"{name}={raw!r} is not valid: expected {expected}") from None


def envstr(name: str, default: str = "") -> str:
    raw = os.environ.get(name)
    return default if raw is None or raw == "" else raw


def envbool(name: str, default: bool) -> bool:
    def parse(value: str) -> bool:
        lowered = value.lower()
        if lowered in _TRUE:
            return True
        if lowered in _FALSE:
            return False
        raise ValueError(value)

    return _read(name, default, parse, "true or false")


_Number = TypeVar("_Number", int, float)


def _number(
    name: str,
    default: _Number,
    convert: Callable[[str], _Number],
    kind: str,
    minimum: _Number | None,
    maximum: _Number | None,
) -> _Number:
    def parse(value: str) -> _Number:
        number = convert(value)
        if number != number:  # NaN
            raise ValueError(value)
        if (minimum is not None and number < minimum) or (maximum is not None and number > maximum):
            raise ValueError(value)
        return number

    if minimum is not None and maximum is not None:
        kind = f"{kind} from {minimum} to {maximum}"
    elif minimum is not None:
        kind = f"{kind} >= {minimum}"
    elif maximum is not None:
        kind = f"{kind} <= {maximum}"
    return _read(name, default, parse, kind)


def envint(
    name: str, default: int, *, minimum: int | None = None, maximum: int | None = None
) -> int:
    return _number(name, default, int, "an integer", minimum, maximum)


def envfloat(
    name: str, default: float, *, minimum: float | None = None, maximum: float | None = None
) -> float:
    return _number(name, default, float, "a number", minimum, maximum)


def envlist(name: str, default: list[str]) -> list[str]:
    """A comma-separated list; blanks around items are ignored, empty items are an error."""

    def parse(value: str) -> list[str]:
        items = [item.strip() for item in value.split(",")]
        if any(item == "" for item in items):
            raise ValueError(value)
        return items

    return _read(name, default, parse, "a comma-separated list with no empty items")


def envchoice(name: str, default: str, choices: tuple[str, ...]) -> str:
    def parse(value: str) -> str:
        if value not in choices:
            raise ValueError(value)
        return value

    return _read(name, default, parse, "one of " + ", ".join(choices))


def envintmap(name: str, default: dict[str, int], *, minimum: int = 1) -> dict[str, int]:
    """`key=number,key=number` (e.g. a per-model figure); a malformed item is an error."""

    def parse(value: str) -> dict[str, int]:
        result: dict[str, int] = {}
        for item in value.split(","):
            key, sep, number = item.strip().partition("=")
            if not sep or not key.strip() or int(number) < minimum:
                raise ValueError(item)
            result[key.strip()] = int(number)
        return result

    return _read(name, default, parse, f"key=integer pairs, comma-separated, integers >= {minimum}")
