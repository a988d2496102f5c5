"""JWT verification and issuance (PROTOCOL §1), and the one-generation SSE tickets."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import jwt
from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser
from django.db import IntegrityError

from api.errors import ApiError

_TICKET_AUDIENCE = "generation-events-ticket"


@dataclass(frozen=True)
class Identity:
    user: AbstractBaseUser
    username: str
    expires_at: int  # the token's exp, unix seconds


def _unauthorized(message: str = "Missing or invalid token.") -> ApiError:
    return ApiError("unauthorized", message)


def _verification_key() -> str:
    return settings.JWT_PUBLIC_KEY or settings.JWT_SECRET


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
            _verification_key(),
            algorithms=settings.JWT_ALGORITHMS,
            leeway=settings.JWT_LEEWAY_S,
            options=options,  # type: ignore[arg-type]
            **kwargs,
        )
    except jwt.ExpiredSignatureError:
        raise ApiError("unauthorized", "The token has expired.") from None
    except jwt.ImmatureSignatureError:
        raise _unauthorized("The token is not valid yet.") from None
    except jwt.InvalidTokenError:
        raise _unauthorized() from None
    if claims.get("aud") == _TICKET_AUDIENCE or claims.get("typ") == "ticket":
        raise _unauthorized()
    if not isinstance(claims.get("sub"), str) or not claims["sub"]:
        raise _unauthorized()
    if not isinstance(claims.get("exp"), int | float):
        raise _unauthorized()
    return claims


def user_for_username(username: str) -> AbstractBaseUser:
    model = get_user_model()
    user = model.objects.filter(username=username).first()
    if user is None:
        if not settings.JWT_AUTO_CREATE_USERS or len(username) > 150:
            raise _unauthorized()
        try:
            user = model.objects.create_user(username=username)
        except IntegrityError:  # created by a concurrent first request
            user = model.objects.get(username=username)
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


def _signing_key_and_algorithm() -> tuple[str, str]:
    algorithm = settings.JWT_ALGORITHMS[0]
    if algorithm.startswith("HS"):
        return settings.JWT_SECRET, algorithm
    if not settings.JWT_PRIVATE_KEY:
        raise ApiError(
            "unavailable",
            "This service verifies tokens from an identity provider and issues none.",
        )
    return settings.JWT_PRIVATE_KEY, algorithm


def issue_token(username: str, *, ttl_s: int | None = None) -> tuple[str, int]:
    """A signed access token for `username` and its lifetime in seconds."""
    key, algorithm = _signing_key_and_algorithm()
    ttl = ttl_s if ttl_s is not None else settings.JWT_TTL_S
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
        raise ApiError("unauthorized", "The ticket has expired.") from None
    except jwt.InvalidTokenError:
        raise _unauthorized("The ticket is not valid.") from None
    if claims.get("typ") != "ticket":
        raise _unauthorized("The ticket is not valid.")
    if claims["gen"] != generation_id:
        raise ApiError("not_found", "No such generation.")
    return int(claims["uid"])
