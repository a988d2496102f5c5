"""The WebSocket frame protocol of PROTOCOL §5: authentication, origins, bad frames, limits.

Black-box: a real `websockets` client against the Daphne process of the `service` fixture
(or the `limited_service` variant where a tight setting is needed).
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import jwt
import pytest
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import InvalidStatus

from tests.harness import Service, make_token
from tests.realtime.wsclient import (
    UNKNOWN_GENERATION_ID,
    close_code,
    create,
    frames_until_close,
    open_ws,
    recv,
    rest,
    send,
    session,
)

MAX_FRAME_BYTES = 64 * 1024


def token_exp(token: str) -> int:
    exp: int = jwt.decode(token, options={"verify_signature": False})["exp"]
    return exp


async def assert_open(ws: ClientConnection, ref: str = "still-open") -> None:
    """The connection still answers: a ping gets its pong."""
    await send(ws, {"type": "ping", "ref": ref})
    assert await recv(ws) == {"type": "pong", "ref": ref}


def assert_error_frame(message: dict[str, Any], code: str) -> None:
    assert message["type"] == "error", message
    assert message["code"] == code, message
    assert isinstance(message["message"], str) and message["message"], message


# -- authentication ------------------------------------------------------------------------


async def test_auth_frame_gets_auth_ok_with_username_and_token_exp(service: Service) -> None:
    token = make_token("alice", ttl_s=900)

    async with open_ws(service) as ws:
        await send(ws, {"type": "auth", "token": token})
        reply = await recv(ws)

        assert reply["type"] == "auth.ok"
        assert reply["user"] == "alice"
        assert reply["expires_at"] == token_exp(token)
        await assert_open(ws)


@pytest.mark.parametrize(
    "token",
    [
        "not-a-jwt",
        jwt.encode({"sub": "alice", "exp": int(time.time()) + 3600}, "wrong-secret" * 4),
        # Expired beyond the 30 s leeway of PROTOCOL §1.
        make_token("alice", ttl_s=-120),
        jwt.encode({"sub": "alice", "exp": int(time.time()) + 3600}, "", algorithm="none"),
        "",
    ],
    ids=["garbage", "wrong-signature", "expired", "alg-none", "empty"],
)
async def test_bad_token_gets_unauthorized_error_then_close_4401(
    service: Service, token: str
) -> None:
    async with open_ws(service) as ws:
        await send(ws, {"type": "auth", "token": token})

        frames, code = await frames_until_close(ws)

    assert len(frames) == 1, frames
    assert_error_frame(frames[0], "unauthorized")
    assert code == 4401


async def test_auth_frame_without_token_closes_4401(service: Service) -> None:
    async with open_ws(service) as ws:
        await send(ws, {"type": "auth"})

        frames, code = await frames_until_close(ws)

    assert [f["code"] for f in frames] == ["unauthorized"]
    assert code == 4401


async def test_no_auth_within_ws_auth_timeout_closes_4408(limited_service: Service) -> None:
    started = time.monotonic()
    async with open_ws(limited_service) as ws:
        code = await close_code(ws, timeout_s=10)

    assert code == 4408
    assert time.monotonic() - started >= 0.9  # WS_AUTH_TIMEOUT=1 on this service


@pytest.mark.parametrize(
    "frame",
    [
        json.dumps({"type": "ping"}),
        json.dumps({"type": "subscribe", "id": UNKNOWN_GENERATION_ID}),
        json.dumps({"type": "generate", "prompt": "hi"}),
        "this is not JSON",
        json.dumps(["auth"]),
    ],
    ids=["ping", "subscribe", "generate", "not-json", "not-an-object"],
)
async def test_any_frame_but_auth_before_authenticating_closes_4401(
    service: Service, frame: str
) -> None:
    async with open_ws(service) as ws:
        await ws.send(frame)

        frames, code = await frames_until_close(ws)

    assert code == 4401
    assert all(f["type"] == "error" for f in frames), frames


async def test_later_auth_with_bad_token_gets_unauthorized_then_close_4401(
    service: Service,
) -> None:
    async with session(service, "alice") as ws:
        await send(ws, {"type": "auth", "token": "not-a-jwt", "ref": "again"})

        frames, code = await frames_until_close(ws)

    assert len(frames) == 1, frames
    assert_error_frame(frames[0], "unauthorized")
    assert frames[0]["ref"] == "again"
    assert code == 4401


async def test_later_auth_with_another_users_token_closes_4401(service: Service) -> None:
    async with session(service, "alice") as ws:
        await send(ws, {"type": "auth", "token": make_token("bob")})

        frames, code = await frames_until_close(ws)

    assert [f["code"] for f in frames] == ["unauthorized"]
    assert code == 4401


async def test_fresh_token_in_later_auth_keeps_connection_past_first_tokens_expiry(
    service: Service,
) -> None:
    short = make_token("alice", ttl_s=2)
    long = make_token("alice", ttl_s=3600)
    async with open_ws(service) as ws:
        await send(ws, {"type": "auth", "token": short})
        assert (await recv(ws))["expires_at"] == token_exp(short)
        await send(ws, {"type": "auth", "token": long, "ref": "renew"})
        renewed = await recv(ws)
        assert renewed["type"] == "auth.ok"
        assert renewed["ref"] == "renew"
        assert renewed["expires_at"] == token_exp(long)

        await asyncio.sleep(max(0.0, token_exp(short) - time.time()) + 1.5)

        await assert_open(ws)


async def test_token_expiring_without_renewal_gets_token_expired_then_close_4401(
    service: Service,
) -> None:
    token = make_token("alice", ttl_s=2)
    async with session(service, "alice", token=token) as ws:
        await assert_open(ws)  # valid until its exp

        frames, code = await frames_until_close(ws, timeout_s=10)

    assert time.time() >= token_exp(token) - 0.05
    assert len(frames) == 1, frames
    assert_error_frame(frames[0], "token_expired")
    assert code == 4401


# -- origins -------------------------------------------------------------------------------


async def test_browser_origin_not_allowed_is_refused_with_403(service: Service) -> None:
    with pytest.raises(InvalidStatus) as refused:
        async with open_ws(service, origin="https://evil.example"):
            pass

    assert refused.value.response.status_code == 403


async def test_origin_listed_in_allowed_origins_is_accepted(limited_service: Service) -> None:
    async with session(limited_service, "olivia", origin="https://app.example") as ws:
        await assert_open(ws)

    with pytest.raises(InvalidStatus) as refused:
        async with open_ws(limited_service, origin="https://app.example.evil.example"):
            pass
    assert refused.value.response.status_code == 403


async def test_services_own_origin_is_accepted(service: Service) -> None:
    own_origin = service.url()  # http://127.0.0.1:PORT, the Host the client sends

    async with session(service, "alice", origin=own_origin) as ws:
        await assert_open(ws)


async def test_client_without_origin_header_is_accepted(service: Service) -> None:
    async with session(service, "alice") as ws:  # websockets sends no Origin by default
        await assert_open(ws)


# -- bad frames after auth -----------------------------------------------------------------


async def test_ping_gets_pong_with_ref(service: Service) -> None:
    async with session(service) as ws:
        await send(ws, {"type": "ping", "ref": 17})

        assert await recv(ws) == {"type": "pong", "ref": 17}


async def test_frame_that_is_not_json_gets_invalid_json_and_connection_stays_open(
    service: Service,
) -> None:
    async with session(service) as ws:
        await ws.send('{"type": "ping", ')

        assert_error_frame(await recv(ws), "invalid_json")
        await assert_open(ws)


@pytest.mark.parametrize(
    "frame",
    [
        {"type": "shout", "ref": "r1"},
        {"ref": "r1"},
        {"type": 7, "ref": "r1"},
    ],
    ids=["unknown", "missing", "not-a-string"],
)
async def test_unknown_frame_type_gets_invalid_request_and_connection_stays_open(
    service: Service, frame: dict[str, Any]
) -> None:
    async with session(service) as ws:
        await send(ws, frame)

        error = await recv(ws)
        assert_error_frame(error, "invalid_request")
        assert error["ref"] == "r1"
        await assert_open(ws)


async def test_binary_frame_closes_1003(service: Service) -> None:
    async with session(service) as ws:
        await ws.send(json.dumps({"type": "ping"}).encode())

        assert await close_code(ws) == 1003


def ping_frame_of(size_bytes: int, filler: str = "x") -> str:
    """A ping frame of exactly `size_bytes` bytes of UTF-8."""
    empty = json.dumps({"type": "ping", "ref": ""}, ensure_ascii=False)
    room = size_bytes - len(empty.encode())
    char_bytes = len(filler.encode())
    ref = filler * (room // char_bytes) + "x" * (room % char_bytes)
    frame = json.dumps({"type": "ping", "ref": ref}, ensure_ascii=False)
    assert len(frame.encode()) == size_bytes
    return frame


@pytest.mark.parametrize("filler", ["x", "\u03b3"], ids=["ascii", "two-byte-utf8"])
async def test_text_frame_over_64_kib_closes_1009(service: Service, filler: str) -> None:
    async with session(service) as ws:
        await ws.send(ping_frame_of(MAX_FRAME_BYTES + 1, filler))

        assert await close_code(ws) == 1009


async def test_text_frame_of_64_kib_is_accepted_and_answered(service: Service) -> None:
    async with session(service) as ws:
        frame = ping_frame_of(MAX_FRAME_BYTES)
        await ws.send(frame)

        assert await recv(ws) == {"type": "pong", "ref": json.loads(frame)["ref"]}


async def test_generate_with_invalid_fields_gets_invalid_request_with_details(
    service: Service,
) -> None:
    async with session(service, "ivan") as ws:
        await send(
            ws,
            {
                "type": "generate",
                "ref": "g1",
                "prompt": "",
                "max_tokens": 0,
                "temperature": 3,
                "model": "no-such-model",
                "colour": "blue",
            },
        )

        error = await recv(ws)
        assert_error_frame(error, "invalid_request")
        assert error["ref"] == "g1"
        assert set(error["details"]) == {"prompt", "max_tokens", "temperature", "model", "colour"}
        await assert_open(ws)
    async with rest(service, "ivan") as client:
        assert (await client.get("/api/v1/generations")).json()["results"] == []


async def test_generate_with_prompt_over_max_prompt_chars_gets_prompt_too_long(
    service: Service,
) -> None:
    async with session(service, "ivan") as ws:
        await send(ws, {"type": "generate", "ref": "long", "prompt": "a" * 32_001})

        error = await recv(ws)
        assert_error_frame(error, "prompt_too_long")
        assert error["ref"] == "long"
        assert "prompt" in error["details"]
        await assert_open(ws)


@pytest.mark.parametrize("generation_id", [UNKNOWN_GENERATION_ID, "gen_nope", "../admin"])
async def test_subscribe_to_unknown_generation_gets_not_found_with_id(
    service: Service, generation_id: str
) -> None:
    async with session(service) as ws:
        await send(ws, {"type": "subscribe", "id": generation_id, "ref": "s1"})

        error = await recv(ws)
        assert_error_frame(error, "not_found")
        assert error["id"] == generation_id
        assert error["ref"] == "s1"
        await assert_open(ws)


async def test_subscribe_and_cancel_of_another_users_generation_get_not_found(
    service: Service,
) -> None:
    bobs = await create(service, "bob", prompt="mine [fake tokens=5]")

    async with session(service, "alice") as ws:
        await send(ws, {"type": "subscribe", "id": bobs["id"], "ref": "peek"})
        error = await recv(ws)
        assert_error_frame(error, "not_found")
        assert (error["id"], error["ref"]) == (bobs["id"], "peek")

        await send(ws, {"type": "cancel", "id": bobs["id"], "ref": "stop"})
        error = await recv(ws)
        assert_error_frame(error, "not_found")
        assert (error["id"], error["ref"]) == (bobs["id"], "stop")
        await assert_open(ws)


@pytest.mark.parametrize("after", [-1, "3", 1.5, True])
async def test_subscribe_with_bad_after_gets_invalid_request(service: Service, after: Any) -> None:
    generation = await create(service, "alice", prompt="x [fake tokens=3]")
    async with session(service) as ws:
        await send(ws, {"type": "subscribe", "id": generation["id"], "after": after})

        assert_error_frame(await recv(ws), "invalid_request")
        await assert_open(ws)


# -- connection limit ----------------------------------------------------------------------


async def test_connection_over_max_connections_per_user_is_closed_4429(
    limited_service: Service,
) -> None:
    async with (
        session(limited_service, "carol") as first,
        session(limited_service, "carol"),
    ):
        async with open_ws(limited_service) as extra:
            await send(extra, {"type": "auth", "token": make_token("carol")})
            frames, code = await frames_until_close(extra)
        assert code == 4429
        assert [f["type"] for f in frames] in ([], ["error"]), frames

        # Another user is not affected by carol's connections.
        async with session(limited_service, "dave") as other:
            await assert_open(other)

        await first.close()
        await assert_accepted_soon(limited_service, "carol")


async def assert_accepted_soon(service: Service, username: str, timeout_s: float = 5) -> None:
    """A new connection is accepted once a closed one has been let go (the server learns of
    the close a moment after the client's close handshake ends)."""
    deadline = time.monotonic() + timeout_s
    while True:
        async with open_ws(service) as ws:
            await send(ws, {"type": "auth", "token": make_token(username)})
            reply = await recv(ws)
            if reply["type"] == "auth.ok":
                await assert_open(ws)
                return
            assert time.monotonic() < deadline, reply
        await asyncio.sleep(0.1)
