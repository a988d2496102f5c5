"""JWT verification and issuance (PROTOCOL §1), and the one-generation SSE tickets."""

from __future__ import annotations

import time
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import jwt
from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser
from django.db import IntegrityError, connection

from api.validation import encodable
from core.errors import ApiError, not_found
from core.selectors import sql_names

_TICKET_AUDIENCE = "generation-events-ticket"


@dataclass(frozen=True)
class Identity:
    user: AbstractBaseUser
    username: str
    expires_at: int  # the token's exp, unix seconds


def _unauthorized(message: str = "Missing or invalid token.") -> ApiError:
    return ApiError("unauthorized", message)


def decode_token(token: str) -> dict[str, Any]:
    """Verify signature and claims; any failure is one 'unauthorized' with a short reason."""
    options: dict[str, Any] = {"require": ["sub", "exp"]}
    kwargs: dict[str, Any] = {}
    if settings.JWT_AUDIENCE:
        kwargs["audience"] = settings.JWT_AUDIENCE
    else:
        # Without a configured audience a token that names one is still accepted, but never
        # a ticket: tickets carry their own audience and grant one generation's events only.
        options["verify_aud"] = False
    if settings.JWT_ISSUER:
        kwargs["issuer"] = settings.JWT_ISSUER
    try:
        claims: dict[str, Any] = jwt.decode(
            token,
            settings.JWT_PUBLIC_KEY or settings.JWT_SECRET,
            algorithms=settings.JWT_ALGORITHMS,
            leeway=settings.JWT_LEEWAY_S,
            options=options,  # type: ignore[arg-type]
            **kwargs,
        )
    except jwt.ExpiredSignatureError:
        raise _unauthorized("The token has expired.") from None
    except jwt.ImmatureSignatureError:
        raise _unauthorized("The token is not valid yet.") from None
    except (jwt.PyJWTError, ValueError, TypeError):
        # ValueError, TypeError: a header naming an allowed algorithm of another key family
        # (ES256 with an RSA key when both are allowed), which the key cannot verify.
        raise _unauthorized() from None
    if claims.get("aud") == _TICKET_AUDIENCE or claims.get("typ") == "ticket":
        raise _unauthorized()
    if not isinstance(claims.get("sub"), str) or not claims["sub"]:
        raise _unauthorized()
    if not isinstance(claims.get("exp"), int | float):
        raise _unauthorized()
    if claims["exp"] - time.time() > settings.JWT_MAX_TTL_S + settings.JWT_LEEWAY_S:
        raise _unauthorized(
            f"The token lives longer than the {settings.JWT_MAX_TTL_S} s this service allows."
        )
    return claims


# Unicode categories a username may not contain: controls, format characters (zero-width
# spaces and joiners, the bidirectional overrides that make a name display as another),
# line and paragraph separators, surrogates, private-use and unassigned code points.
_REFUSED_USERNAME_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs", "Co", "Cn"})


def username_problem(username: str) -> str | None:
    """Why `username` cannot name an account, or None when it can.

    A name must survive storage byte for byte: a lone surrogate cannot be encoded at all, and
    Django's create_user applies NFKC, so a full-width or otherwise compatibility-mapped name
    would be stored as another (existing) name. Invisible and bidirectional-control characters
    are refused so that two accounts can never look the same in the admin or a log.
    """
    if not encodable(username):
        return "The username is not valid Unicode text."
    if any(unicodedata.category(char) in _REFUSED_USERNAME_CATEGORIES for char in username):
        return "The username contains invisible or control characters."
    if unicodedata.normalize("NFKC", username) != username:
        return "The username is not in normalised (NFKC) form."
    return None


def exact_user(username: str) -> AbstractBaseUser | None:
    """The account whose username is exactly `username`, byte for byte, on every database.

    MySQL's collations (utf8mb4_unicode_ci here) compare case- and accent-insensitively and
    ignore trailing spaces, so `ALICE`, `alíce` and `alice ` all match alice's row there: the
    database narrows the candidates and Python makes the exact comparison.

    In SQL, and only the columns a request uses (the others load if something reads them):
    every request and connection with a token comes here, and the ORM's building of the
    statement cost several times its round trip (docs/scaling.md, "Per-stream reads in SQL").
    """
    model = get_user_model()
    wanted = {model._meta.pk.attname, model.USERNAME_FIELD, "is_active"}
    fields = [f for f in model._meta.concrete_fields if f.attname in wanted]
    users = sql_names(model)
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT {', '.join(users.column[f.attname] for f in fields)} FROM {users.table}"
            f" WHERE {users.column[model.USERNAME_FIELD]} = %s",
            [username],
        )
        candidates = cursor.fetchall()
    for row in candidates:
        values = [f.to_python(value) for f, value in zip(fields, row, strict=True)]
        user = model.from_db(connection.alias, [f.attname for f in fields], values)
        if user.get_username() == username:
            return user
    return None


def user_for_username(username: str) -> AbstractBaseUser:
    if username_problem(username) is not None:
        raise _unauthorized()
    user = exact_user(username)
    if user is None:
        if not settings.JWT_AUTO_CREATE_USERS or len(username) > 150:
            raise _unauthorized()
        try:
            user = get_user_model().objects.create_user(username=username)
        except IntegrityError:
            # Created by a concurrent first request, or another name that the database's
            # collation treats as equal exists (then this subject names no account).
            user = exact_user(username)
            if user is None:
                raise _unauthorized() from None
    if not user.is_active:
        raise _unauthorized()
    return user


def authenticate_token(token: str) -> Identity:
    claims = decode_token(token)
    user = user_for_username(claims["sub"])
    return Identity(user=user, username=claims["sub"], expires_at=int(claims["exp"]))


def bearer_token(header: str | None) -> str:
    if not header:
        raise _unauthorized()
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise _unauthorized()
    return token.strip()


def issue_token(username: str, *, ttl_s: int | None = None) -> tuple[str, int]:
    """A signed access token for `username` and its lifetime in seconds."""
    algorithm = settings.JWT_ALGORITHMS[0]
    key = settings.JWT_SECRET if algorithm.startswith("HS") else settings.JWT_PRIVATE_KEY
    if not key:
        raise ApiError(
            "unavailable",
            "This service verifies tokens from an identity provider and issues none.",
        )
    ttl = ttl_s if ttl_s is not None else settings.JWT_TTL_S
    if not 1 <= ttl <= settings.JWT_MAX_TTL_S:
        raise ApiError(
            "invalid_request", f"A token lives 1 to {settings.JWT_MAX_TTL_S} s (JWT_MAX_TTL_S)."
        )
    now = int(time.time())
    claims: dict[str, Any] = {"sub": username, "iat": now, "exp": now + ttl}
    if settings.JWT_AUDIENCE:
        claims["aud"] = settings.JWT_AUDIENCE
    if settings.JWT_ISSUER:
        claims["iss"] = settings.JWT_ISSUER
    return jwt.encode(claims, key, algorithm=algorithm), ttl


def issue_ticket(*, user_id: int, generation_id: str) -> tuple[str, int]:
    """A short-lived credential that reads one generation's events and nothing else.

    Always HMAC with the service's own secret: tickets are minted and checked here only.
    """
    now = int(time.time())
    ttl = settings.TICKET_TTL_S
    claims = {
        "aud": _TICKET_AUDIENCE,
        "typ": "ticket",
        "uid": user_id,
        "gen": generation_id,
        "iat": now,
        # +1: `exp` has whole seconds and `now` was rounded down; a ticket lives at least
        # TICKET_TTL_S (its `iat` must not be in the future either, or it is refused).
        "exp": now + ttl + 1,
    }
    return jwt.encode(claims, settings.SECRET_KEY, algorithm="HS256"), ttl


def user_is_active(user_id: int) -> bool:
    """Whether the account still exists and is active: a ticket stops working as soon as its
    user is deactivated, not when it expires (open WebSockets: realtime.upkeep)."""
    return user_id in active_user_ids([user_id])


def active_user_ids(user_ids: Sequence[int]) -> set[int]:
    """Which of `user_ids` name accounts that still exist and are active, in one statement
    (realtime.upkeep checks every open WebSocket connection's user this way)."""
    if not user_ids:
        return set()
    model = get_user_model()
    users = sql_names(model)
    pk = users.column[model._meta.pk.attname]
    placeholders = ", ".join(["%s"] * len(user_ids))
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT {pk} FROM {users.table}"
            f" WHERE {pk} IN ({placeholders}) AND {users.column['is_active']} = %s",
            [*user_ids, True],
        )
        return {int(row[0]) for row in cursor.fetchall()}


def verify_ticket(ticket: str, *, generation_id: str) -> int:
    """The user id the ticket was issued to; 401 when invalid or expired, 404 for another id."""
    try:
        claims = jwt.decode(
            ticket,
            settings.SECRET_KEY,
            algorithms=["HS256"],
            audience=_TICKET_AUDIENCE,
            options={"require": ["exp", "gen", "uid"]},
        )
    except jwt.ExpiredSignatureError:
        raise _unauthorized("The ticket has expired.") from None
    except jwt.InvalidTokenError:
        raise _unauthorized("The ticket is not valid.") from None
    if claims.get("typ") != "ticket":
        raise _unauthorized("The ticket is not valid.")
    if claims["gen"] != generation_id:
        raise not_found()
    return int(claims["uid"])
