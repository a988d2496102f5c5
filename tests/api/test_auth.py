"""JWT authentication with the default HS256 secret, and the ways to get a token (PROTOCOL §1)."""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

import httpx
import jwt
import pytest

from tests.api.support import (
    assert_error,
    assert_unauthorized,
    bearer,
    claims,
    hmac_token,
    unsigned_token,
)
from tests.harness import Background, Service, make_token
from tests.tier_env import JWT_SECRET


def me(client: httpx.Client, token: str) -> httpx.Response:
    return client.get("/api/v1/me", headers=bearer(token))


def fresh_name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def create_users(service: Service, password: str, **active_by_name: bool) -> None:
    """Users with a password, in one Django start-up (each takes a second or so)."""
    service.django(
        "from django.contrib.auth import get_user_model\n"
        f"for name, active in {active_by_name!r}.items():\n"
        f"    user = get_user_model().objects.create_user(name, password={password!r})\n"
        "    user.is_active = active\n"
        "    user.save()\n"
    )


# --- Accepted tokens -------------------------------------------------------------------------


def test_valid_hs256_token_is_accepted_and_names_the_user(anonymous: httpx.Client) -> None:
    response = me(anonymous, make_token("alice"))

    assert response.status_code == 200, response.text
    assert response.json()["username"] == "alice"


def test_first_token_for_an_unknown_user_creates_that_user(anonymous: httpx.Client) -> None:
    username = fresh_name("newcomer")

    first = me(anonymous, make_token(username))
    second = me(anonymous, make_token(username))

    assert first.status_code == second.status_code == 200
    assert first.json()["username"] == second.json()["username"] == username


def test_token_expired_within_the_30_s_leeway_is_accepted(anonymous: httpx.Client) -> None:
    response = me(anonymous, make_token("alice", ttl_s=-10))

    assert response.status_code == 200, response.text


def test_token_with_nbf_in_the_past_is_accepted(anonymous: httpx.Client) -> None:
    token = jwt.encode(claims("alice", nbf=int(time.time()) - 60), JWT_SECRET, "HS256")

    assert me(anonymous, token).status_code == 200


# --- Rejected tokens -------------------------------------------------------------------------


def test_token_signed_with_alg_none_is_rejected(anonymous: httpx.Client) -> None:
    assert_unauthorized(me(anonymous, unsigned_token(claims("alice"))))


@pytest.mark.parametrize("alg", ["None", "NONE", "nOnE"])
def test_token_with_alg_none_in_any_case_is_rejected(anonymous: httpx.Client, alg: str) -> None:
    assert_unauthorized(me(anonymous, unsigned_token(claims("alice"), alg=alg)))


def test_token_with_alg_none_and_a_valid_hs256_signature_is_rejected(
    anonymous: httpx.Client,
) -> None:
    # The signature is valid HS256 over the bytes, but the header claims no algorithm.
    valid = make_token("alice")
    header = unsigned_token({}, alg="none").split(".")[0]
    _, payload, signature = valid.split(".")

    assert_unauthorized(me(anonymous, f"{header}.{payload}.{signature}"))


def test_token_signed_with_the_wrong_secret_is_rejected(anonymous: httpx.Client) -> None:
    token = jwt.encode(claims("alice"), "some-other-secret-0123456789abcdef", "HS256")

    assert_unauthorized(me(anonymous, token))


def test_token_signed_with_an_algorithm_that_is_not_configured_is_rejected(
    anonymous: httpx.Client,
) -> None:
    # Right secret, but HS512: the accepted algorithm list is fixed by configuration (HS256).
    token = hmac_token(claims("alice"), JWT_SECRET.encode(), alg="HS512")

    assert_unauthorized(me(anonymous, token))


def test_token_with_a_tampered_payload_is_rejected(anonymous: httpx.Client) -> None:
    header, _, signature = make_token("alice").split(".")
    forged_payload = jwt.encode(claims("admin"), "x" * 32, "HS256").split(".")[1]

    assert_unauthorized(me(anonymous, f"{header}.{forged_payload}.{signature}"))


def test_token_without_exp_is_rejected(anonymous: httpx.Client) -> None:
    token = jwt.encode({"sub": "alice", "iat": int(time.time())}, JWT_SECRET, "HS256")

    assert_unauthorized(me(anonymous, token))


def test_token_without_sub_is_rejected(anonymous: httpx.Client) -> None:
    now = int(time.time())
    token = jwt.encode({"iat": now, "exp": now + 600}, JWT_SECRET, "HS256")

    assert_unauthorized(me(anonymous, token))


@pytest.mark.parametrize("sub", ["", 42, None, ["alice"], "x" * 151])
def test_token_whose_sub_is_not_a_usable_username_is_rejected(
    anonymous: httpx.Client, sub: Any
) -> None:
    now = int(time.time())
    token = jwt.encode({"sub": sub, "iat": now, "exp": now + 600}, JWT_SECRET, "HS256")

    assert_unauthorized(me(anonymous, token))


@pytest.mark.parametrize("exp", ["tomorrow", None, {"when": 1}])
def test_token_whose_exp_is_not_a_number_is_rejected(anonymous: httpx.Client, exp: Any) -> None:
    token = jwt.encode({"sub": "alice", "exp": exp}, JWT_SECRET, "HS256")

    assert_unauthorized(me(anonymous, token))


def test_token_expired_beyond_the_leeway_is_rejected(anonymous: httpx.Client) -> None:
    response = me(anonymous, make_token("alice", ttl_s=-60))

    assert_unauthorized(response)
    assert "expired" in response.json()["error"]["message"].lower()


def test_token_with_nbf_in_the_future_is_rejected(anonymous: httpx.Client) -> None:
    token = jwt.encode(claims("alice", nbf=int(time.time()) + 300), JWT_SECRET, "HS256")

    assert_unauthorized(me(anonymous, token))


def test_token_issued_in_the_future_is_rejected(anonymous: httpx.Client) -> None:
    token = jwt.encode(claims("alice", iat=int(time.time()) + 600), JWT_SECRET, "HS256")

    assert_unauthorized(me(anonymous, token))


def test_token_for_an_inactive_user_is_rejected(
    anonymous: httpx.Client, accounts: Accounts
) -> None:
    assert_unauthorized(me(anonymous, make_token(accounts.inactive)))


def test_sse_ticket_used_as_a_bearer_token_is_rejected(
    alice: httpx.Client, anonymous: httpx.Client
) -> None:
    generation = alice.post("/api/v1/generations", json={"prompt": "t [fake tokens=1]"}).json()
    ticket = alice.post(f"/api/v1/generations/{generation['id']}/ticket").json()["ticket"]

    assert_unauthorized(me(anonymous, ticket))


# --- The Authorization header ----------------------------------------------------------------


def test_request_without_authorization_header_is_unauthorized(anonymous: httpx.Client) -> None:
    assert_unauthorized(anonymous.get("/api/v1/me"))
    assert_unauthorized(anonymous.get("/api/v1/generations"))
    assert_unauthorized(anonymous.post("/api/v1/generations", json={"prompt": "hi"}))


@pytest.mark.parametrize(
    "header",
    [
        "Bearer",
        "Bearer not-a-jwt",
        "Bearer a.b.c",
        "Bearer ....",
        "Basic YWxpY2U6c2VjcmV0",
        "Token {token}",
        "{token}",
        "Bearer {token}x",
        "Bearer {token} {token}",
    ],
)
def test_garbled_authorization_header_is_unauthorized(anonymous: httpx.Client, header: str) -> None:
    value = header.format(token=make_token("alice"))

    assert_unauthorized(anonymous.get("/api/v1/me", headers={"Authorization": value}))


def test_bearer_scheme_is_case_insensitive(anonymous: httpx.Client) -> None:
    response = anonymous.get("/api/v1/me", headers={"Authorization": f"bearer {make_token('a')}"})

    assert response.status_code == 200, response.text


def test_rejected_request_with_a_body_never_creates_a_generation(
    alice: httpx.Client, anonymous: httpx.Client
) -> None:
    forged = jwt.encode(claims("alice"), "wrong-secret-0123456789abcdef012345", "HS256")
    before = alice.get("/api/v1/generations", params={"limit": 100}).json()["results"]

    response = anonymous.post(
        "/api/v1/generations", json={"prompt": "forged [fake tokens=1]"}, headers=bearer(forged)
    )

    assert_unauthorized(response)
    after = alice.get("/api/v1/generations", params={"limit": 100}).json()["results"]
    assert [g["id"] for g in after] == [g["id"] for g in before]


# --- POST /api/v1/auth/token -----------------------------------------------------------------


@dataclass(frozen=True)
class Accounts:
    active: str  # has the password PASSWORD
    inactive: str  # has the password PASSWORD, but is_active is false


PASSWORD = "correct horse"


@pytest.fixture(scope="module")
def accounts(service: Service) -> Accounts:
    """Users with a password, made once: hashing a password takes most of a second."""
    made = Accounts(active=fresh_name("pat"), inactive=fresh_name("dormant"))
    create_users(service, PASSWORD, **{made.active: True, made.inactive: False})
    return made


def test_token_endpoint_with_right_password_returns_a_working_bearer_token(
    anonymous: httpx.Client, accounts: Accounts
) -> None:
    response = anonymous.post(
        "/api/v1/auth/token", json={"username": accounts.active, "password": PASSWORD}
    )

    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"access_token", "token_type", "expires_in"}
    assert body["token_type"] == "Bearer"
    assert isinstance(body["expires_in"], int) and body["expires_in"] > 0
    issued = jwt.decode(body["access_token"], JWT_SECRET, algorithms=["HS256"])
    assert issued["sub"] == accounts.active
    assert issued["exp"] - int(time.time()) == pytest.approx(body["expires_in"], abs=5)
    answer = me(anonymous, body["access_token"])
    assert answer.status_code == 200
    assert answer.json()["username"] == accounts.active


def test_token_endpoint_gives_the_same_401_for_wrong_password_and_unknown_user(
    anonymous: httpx.Client, accounts: Accounts
) -> None:
    wrong_password = anonymous.post(
        "/api/v1/auth/token", json={"username": accounts.active, "password": "battery staple"}
    )
    unknown_user = anonymous.post(
        "/api/v1/auth/token",
        json={"username": fresh_name("nobody"), "password": "battery staple"},
    )

    assert_unauthorized(wrong_password)
    assert_unauthorized(unknown_user)
    assert wrong_password.json() == unknown_user.json()
    assert wrong_password.headers["www-authenticate"] == unknown_user.headers["www-authenticate"]


def test_token_endpoint_refuses_an_inactive_user_with_the_same_401(
    anonymous: httpx.Client, accounts: Accounts
) -> None:
    inactive = anonymous.post(
        "/api/v1/auth/token", json={"username": accounts.inactive, "password": PASSWORD}
    )
    unknown = anonymous.post(
        "/api/v1/auth/token", json={"username": fresh_name("nobody"), "password": PASSWORD}
    )

    assert_unauthorized(inactive)
    assert inactive.json() == unknown.json()


def test_user_created_from_a_jwt_cannot_log_in_with_a_password(
    anonymous: httpx.Client,
) -> None:
    username = fresh_name("stranger")
    assert me(anonymous, make_token(username)).status_code == 200

    response = anonymous.post(
        "/api/v1/auth/token", json={"username": username, "password": "guess"}
    )

    assert_unauthorized(response)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"password": "x"}, "username"),
        ({"username": "pat"}, "password"),
        ({"username": 7, "password": "x"}, "username"),
        ({"username": "pat", "password": ["x"]}, "password"),
        ({"username": "pat", "password": "x", "scope": "admin"}, "scope"),
    ],
)
def test_token_endpoint_rejects_bad_fields_with_details(
    anonymous: httpx.Client, body: dict[str, Any], field: str
) -> None:
    details = assert_error(anonymous.post("/api/v1/auth/token", json=body), 400, "invalid_request")

    assert field in details


def test_token_endpoint_needs_a_json_body(anonymous: httpx.Client, accounts: Accounts) -> None:
    form = anonymous.post(
        "/api/v1/auth/token", data={"username": accounts.active, "password": PASSWORD}
    )
    malformed = anonymous.post(
        "/api/v1/auth/token",
        content=b'{"username": ',
        headers={"Content-Type": "application/json"},
    )

    assert_error(form, 415, "unsupported_media_type")
    assert_error(malformed, 400, "invalid_json")


def test_token_endpoint_only_accepts_post(anonymous: httpx.Client) -> None:
    response = anonymous.get("/api/v1/auth/token")

    assert_error(response, 405, "method_not_allowed")
    assert response.headers["allow"] == "POST"


# --- manage.py issue_token -------------------------------------------------------------------


def test_issue_token_command_prints_a_token_that_works(
    service: Service, anonymous: httpx.Client
) -> None:
    username = fresh_name("cli")

    token = service.manage("issue_token", username).strip()

    assert token.count(".") == 2
    response = me(anonymous, token)
    assert response.status_code == 200, response.text
    assert response.json()["username"] == username


def test_issue_token_command_honours_ttl(service: Service) -> None:
    token = service.manage("issue_token", "alice", "--ttl", "120").strip()

    issued = jwt.decode(token, JWT_SECRET, algorithms=["HS256"])
    assert issued["exp"] - int(time.time()) == pytest.approx(120, abs=5)


def test_issue_token_command_refuses_an_inactive_user(service: Service, accounts: Accounts) -> None:
    with pytest.raises(RuntimeError, match=accounts.inactive):
        service.manage("issue_token", accounts.inactive)


def test_concurrent_first_tokens_of_a_new_user_all_succeed(service: Service) -> None:
    # Every request races to create the user; the losers must find the winner's row.
    username = fresh_name("crowd")
    start = threading.Barrier(10)

    def first_request() -> int:
        with service.client(username) as client:
            start.wait(timeout=30)
            return client.get("/api/v1/me").status_code

    threads = [Background(first_request) for _ in range(10)]
    for thread in threads:
        thread.start()

    assert [thread.value() for thread in threads] == [200] * 10
