"""Throttling of password sign-in (PROTOCOL §8), for the token endpoint and the admin's login
form: failed attempts per account and per address, counted by api.ratelimit (in Redis in the
distributed mode, shared by every web process). While either is over its limit, every attempt,
right password or not, gets 429 rate_limited, so a guess cannot be confirmed during the wait.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable

from django.conf import settings
from django.http import HttpRequest, HttpResponse

from api.ratelimit import rate_limiter
from core.errors import ApiError, error_response


def _counters(username: str, address: str) -> list[tuple[str, int]]:
    """The failure counters an attempt is checked against, each key with its limit."""
    # casefold: MySQL's collation lets `ALICE` sign in as alice, so they are one account here.
    digest = hashlib.sha256(username.casefold().encode("utf-8", "replace")).hexdigest()[:32]
    return [
        (f"login-account:{digest}", settings.LOGIN_FAILURES_PER_ACCOUNT),
        (f"login-address:{address}", settings.LOGIN_FAILURES_PER_ADDRESS),
    ]


def client_address(request: HttpRequest) -> str:
    """The client's address as Daphne reports it (behind a proxy, start Daphne with
    --proxy-headers so that this is the client's and not the proxy's)."""
    return str(request.META.get("REMOTE_ADDR") or "unknown")


def check_login_allowed(username: str, address: str) -> None:
    """Raise 429 rate_limited while the account or the address is over its failure limit."""
    limiter = rate_limiter()
    waits = [limiter.retry_after_if_blocked(*counter) for counter in _counters(username, address)]
    wait_s = max((wait for wait in waits if wait is not None), default=None)
    if wait_s is not None:
        raise ApiError(
            "rate_limited",
            "Too many failed sign-in attempts; try again later.",
            retry_after_s=wait_s,
        )


def record_login_failure(username: str, address: str) -> None:
    for key, _limit in _counters(username, address):
        rate_limiter().count_failure(key)


View = Callable[[HttpRequest], HttpResponse]


def throttled_admin_login(login_view: View) -> View:
    """The admin's login view with the same throttle: a POST that re-renders the form (200)
    failed; a successful one redirects."""

    @functools.wraps(login_view)
    def view(request: HttpRequest, *args: object, **kwargs: object) -> HttpResponse:
        if request.method != "POST":
            return login_view(request, *args, **kwargs)
        username = str(request.POST.get("username", ""))
        address = client_address(request)
        try:
            check_login_allowed(username, address)
        except ApiError as error:
            return error_response(error)
        response = login_view(request, *args, **kwargs)
        if response.status_code == 200:
            record_login_failure(username, address)
        return response

    return view
