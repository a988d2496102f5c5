"""JWT settings an operator can change (PROTOCOL §1): public keys, audience and issuer, and
whether unknown users are created. Each configuration is its own service, started once."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from tests.api.support import assert_unauthorized, bearer, claims, hmac_token
from tests.harness import FakeLLM, Service, make_token
from tests.tier_env import JWT_SECRET

PASSWORD = "correct horse"


@dataclass(frozen=True)
class KeyPair:
    algorithm: str
    private_pem: str
    public_pem: str

    def sign(self, payload: dict[str, Any], algorithm: str | None = None) -> str:
        return jwt.encode(payload, self.private_pem, algorithm=algorithm or self.algorithm)


def _pems(private_key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> tuple[str, str]:
    private_pem = private_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    public_pem = (
        private_key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    return private_pem, public_pem


def key_pair(algorithm: str) -> KeyPair:
    private_key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
    if algorithm == "RS256":
        private_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    else:
        private_key = ec.generate_private_key(ec.SECP256R1())
    private_pem, public_pem = _pems(private_key)
    return KeyPair(algorithm, private_pem, public_pem)


@dataclass(frozen=True)
class Asymmetric:
    service: Service
    keys: KeyPair
    user: str  # has the password PASSWORD


def _add_user(service: Service, username: str, password: str | None = None) -> None:
    service.django(
        "from django.contrib.auth import get_user_model\n"
        f"get_user_model().objects.create_user({username!r}, password={password!r})\n"
    )


@pytest.fixture(scope="module", params=["RS256", "ES256"])
def asymmetric(request: pytest.FixtureRequest, fake_llm: FakeLLM) -> Iterator[Asymmetric]:
    """A service that verifies tokens with a public key, and signs its own with the private."""
    keys = key_pair(request.param)
    # No worker: these tests only authenticate.
    service = Service(
        fake_llm,
        env={
            "JWT_PUBLIC_KEY": keys.public_pem,
            "JWT_PRIVATE_KEY": keys.private_pem,
            # These tests sign tokens without `aud`: the explicit opt-out of the audience.
            "JWT_ALLOW_ANY_AUDIENCE": "true",
        },
        workers=0,
    ).start()
    _add_user(service, "pat", PASSWORD)
    try:
        yield Asymmetric(service, keys, "pat")
    finally:
        service.stop()


def me(setup: Asymmetric | Service, token: str) -> httpx.Response:
    service = setup.service if isinstance(setup, Asymmetric) else setup
    return httpx.get(service.url("/api/v1/me"), headers=bearer(token), timeout=30)


# --- RS256 / ES256 ---------------------------------------------------------------------------


def test_token_signed_with_the_configured_private_key_is_accepted(asymmetric: Asymmetric) -> None:
    response = me(asymmetric, asymmetric.keys.sign(claims("ivy")))

    assert response.status_code == 200, response.text
    assert response.json()["username"] == "ivy"


def test_token_signed_with_another_key_of_the_same_type_is_rejected(
    asymmetric: Asymmetric,
) -> None:
    impostor = key_pair(asymmetric.keys.algorithm)

    assert_unauthorized(me(asymmetric, impostor.sign(claims("ivy"))))


def test_hs256_token_is_rejected_when_a_public_key_is_configured(asymmetric: Asymmetric) -> None:
    # Valid under the test run's JWT_SECRET, which is still set in this service's environment.
    assert_unauthorized(me(asymmetric, make_token("ivy")))


def test_hs256_token_signed_with_the_public_key_as_secret_is_rejected(
    asymmetric: Asymmetric,
) -> None:
    # The classic key-confusion attack: the public PEM is public, so anyone can compute this.
    token = hmac_token(claims("ivy"), asymmetric.keys.public_pem.encode())

    assert_unauthorized(me(asymmetric, token))


def test_token_with_the_other_asymmetric_algorithm_is_rejected(asymmetric: Asymmetric) -> None:
    other = key_pair("ES256" if asymmetric.keys.algorithm == "RS256" else "RS256")

    assert_unauthorized(me(asymmetric, other.sign(claims("ivy"))))


def test_asymmetric_token_without_exp_is_rejected(asymmetric: Asymmetric) -> None:
    assert_unauthorized(me(asymmetric, asymmetric.keys.sign({"sub": "ivy"})))


def test_asymmetric_token_expired_beyond_the_leeway_is_rejected(asymmetric: Asymmetric) -> None:
    assert_unauthorized(me(asymmetric, asymmetric.keys.sign(claims("ivy", ttl_s=-60))))


def test_token_endpoint_signs_with_the_configured_private_key(asymmetric: Asymmetric) -> None:
    response = httpx.post(
        asymmetric.service.url("/api/v1/auth/token"),
        json={"username": asymmetric.user, "password": PASSWORD},
        timeout=30,
    )

    assert response.status_code == 200, response.text
    token = response.json()["access_token"]
    assert jwt.get_unverified_header(token)["alg"] == asymmetric.keys.algorithm
    issued = jwt.decode(token, asymmetric.keys.public_pem, algorithms=[asymmetric.keys.algorithm])
    assert issued["sub"] == asymmetric.user
    assert me(asymmetric, token).json()["username"] == asymmetric.user


def test_issue_token_command_signs_with_the_configured_private_key(
    asymmetric: Asymmetric,
) -> None:
    token = asymmetric.service.manage("issue_token", "cli-user").strip()

    assert jwt.get_unverified_header(token)["alg"] == asymmetric.keys.algorithm
    assert me(asymmetric, token).json()["username"] == "cli-user"


# --- Audience, issuer, no auto-created users -------------------------------------------------

AUDIENCE = "llm-api"
ISSUER = "https://idp.example.test/"


@pytest.fixture(scope="module")
def strict(fake_llm: FakeLLM) -> Iterator[Service]:
    """Audience and issuer configured, and users must exist before their first token."""
    service = Service(
        fake_llm,
        env={
            "JWT_AUDIENCE": AUDIENCE,
            "JWT_ISSUER": ISSUER,
            "JWT_AUTO_CREATE_USERS": "false",
        },
        workers=0,
    ).start()
    _add_user(service, "known", PASSWORD)
    try:
        yield service
    finally:
        service.stop()


def strict_token(username: str = "known", **overrides: Any) -> str:
    payload = claims(username, aud=AUDIENCE, iss=ISSUER)
    for name, value in overrides.items():
        if value is None:
            payload.pop(name)
        else:
            payload[name] = value
    return jwt.encode(payload, JWT_SECRET, "HS256")


def test_token_with_the_configured_audience_and_issuer_is_accepted(strict: Service) -> None:
    response = me(strict, strict_token())

    assert response.status_code == 200, response.text
    assert response.json()["username"] == "known"


def test_token_whose_audience_list_contains_the_configured_one_is_accepted(
    strict: Service,
) -> None:
    response = me(strict, strict_token(aud=["other-api", AUDIENCE]))

    assert response.status_code == 200, response.text


@pytest.mark.parametrize(
    "overrides",
    [
        {"aud": "other-api"},
        {"aud": ["other-api"]},
        {"aud": None},
        {"iss": "https://evil.example.test/"},
        {"iss": None},
    ],
    ids=["wrong-aud", "wrong-aud-list", "missing-aud", "wrong-iss", "missing-iss"],
)
def test_token_with_wrong_or_missing_audience_or_issuer_is_rejected(
    strict: Service, overrides: dict[str, Any]
) -> None:
    assert_unauthorized(me(strict, strict_token(**overrides)))


def test_unknown_user_is_rejected_when_auto_creation_is_off(strict: Service) -> None:
    assert_unauthorized(me(strict, strict_token("never-seen")))
    # Still unknown: a rejected token did not create the user on the way.
    assert_unauthorized(me(strict, strict_token("never-seen")))
    assert me(strict, strict_token("known")).status_code == 200


def test_issue_token_command_refuses_an_unknown_user_when_auto_creation_is_off(
    strict: Service,
) -> None:
    with pytest.raises(RuntimeError, match="never-seen"):
        strict.manage("issue_token", "never-seen")


def test_issued_tokens_carry_the_configured_audience_and_issuer(strict: Service) -> None:
    response = httpx.post(
        strict.url("/api/v1/auth/token"),
        json={"username": "known", "password": PASSWORD},
        timeout=30,
    )

    assert response.status_code == 200, response.text
    token = response.json()["access_token"]
    issued = jwt.decode(token, JWT_SECRET, algorithms=["HS256"], audience=AUDIENCE, issuer=ISSUER)
    assert issued["sub"] == "known"
    assert me(strict, token).status_code == 200
    assert me(strict, strict.manage("issue_token", "known").strip()).status_code == 200


def test_token_without_exp_is_rejected_even_with_audience_and_issuer(strict: Service) -> None:
    now = int(time.time())
    token = jwt.encode({"sub": "known", "aud": AUDIENCE, "iss": ISSUER, "iat": now}, JWT_SECRET)

    assert_unauthorized(me(strict, token))
