"""Generations over the WebSocket (PROTOCOL §3 and §5): generate, subscribe, unsubscribe,
cancel, multiplexing, resuming after a disconnect (also across SSE), slow consumers and
shutdown. Every stream is checked the way a client uses it: its fold must equal the final
`output` of GET /api/v1/generations/{id}.
"""

from __future__ import annotations

import asyncio
import itertools
import signal
import socket
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection

from jobs.events import fold
from tests.fake_openai import expected_text
from tests.harness import FakeLLM, Service, make_token, messages, stream_events
from tests.realtime.wsclient import (
    EVENT_TYPES,
    GENERATION_FIELDS,
    Message,
    assert_gap_free,
    close_code,
    create,
    events_in_arrival_order,
    events_until_done,
    frames_until_close,
    generation,
    open_ws,
    recv,
    recv_for,
    recv_type,
    rest,
    send,
    session,
    wait_terminal,
)


async def generate(ws: ClientConnection, prompt: str, ref: str = "gen", **fields: Any) -> Message:
    """Send `generate`; the generation of the `created` reply."""
    await send(ws, {"type": "generate", "ref": ref, "prompt": prompt, **fields})
    created = await recv(ws)
    assert created["type"] == "created", created
    assert created["ref"] == ref
    body: Message = created["generation"]
    return body


async def events(ws: ClientConnection, generation_id: str, count: int) -> list[Message]:
    """The next `count` events of one generation (the connection carries only it)."""
    received = [await recv(ws) for _ in range(count)]
    assert all(m["type"] in EVENT_TYPES and m["id"] == generation_id for m in received), received
    return received


def seqs(received: list[Message]) -> list[int]:
    return [m["seq"] for m in received]


# -- generate and subscribe ----------------------------------------------------------------


async def test_generate_replies_created_then_snapshot_and_events_folding_to_output(
    service: Service,
) -> None:
    async with session(service) as ws:
        await send(
            ws,
            {
                "type": "generate",
                "ref": "r-1",
                "prompt": "tell me [fake tokens=60 rate=300]",
                "max_tokens": 100,
                "temperature": 0.5,
            },
        )
        created = await recv(ws)
        assert created["type"] == "created"
        assert created["ref"] == "r-1"
        body = created["generation"]
        assert set(body) == GENERATION_FIELDS
        assert body["prompt"] == "tell me [fake tokens=60 rate=300]"
        assert (body["max_tokens"], body["temperature"]) == (100, 0.5)
        assert body["status"] in ("queued", "running")

        received = await events_until_done(ws, body["id"])

    assert received[0]["type"] == "snapshot"
    assert received[0]["seq"] >= 0
    assert_gap_free(received)
    done = received[-1]
    assert (done["status"], done["finish_reason"]) == ("completed", "stop")
    final = await generation(service, body["id"])
    assert fold(received) == final["output"] == expected_text(60)
    assert final["seq"] == done["seq"]
    assert done["usage"] == final["usage"]
    assert final["usage"]["completion_tokens"] == 60


async def test_generate_twice_with_same_idempotency_key_gives_one_generation(
    service: Service,
) -> None:
    frame = {"type": "generate", "prompt": "once [fake tokens=10]", "idempotency_key": "k-1"}
    async with session(service, "ida") as ws:
        await send(ws, {**frame, "ref": "a"})
        await send(ws, {**frame, "ref": "b"})

        first, _ = await recv_type(ws, "created")
        second, _ = await recv_type(ws, "created")

    assert (first["ref"], second["ref"]) == ("a", "b")
    assert first["generation"]["id"] == second["generation"]["id"]
    async with rest(service, "ida") as client:
        listed = (await client.get("/api/v1/generations")).json()["results"]
    assert [g["id"] for g in listed] == [first["generation"]["id"]]


async def test_subscribe_with_after_replays_exactly_the_events_after_it_without_snapshot(
    service: Service,
) -> None:
    async with session(service) as ws:
        body = await generate(ws, "replay [fake tokens=40 rate=400]")
        original = await events_until_done(ws, body["id"])
    deltas = [m for m in original if m["type"] == "delta"]
    after = deltas[len(deltas) // 2]["seq"]

    async with session(service) as ws:
        await send(ws, {"type": "subscribe", "id": body["id"], "after": after, "ref": "s"})
        assert await recv(ws) == {"type": "subscribed", "ref": "s", "id": body["id"]}
        replayed = await events_until_done(ws, body["id"])

    assert replayed == [m for m in original if m["type"] != "snapshot" and m["seq"] > after]
    assert seqs(replayed)[0] == after + 1


async def test_subscribe_from_zero_to_running_generation_gets_snapshot_then_live_events(
    service: Service,
) -> None:
    body = await create(service, prompt="watch [fake tokens=80 rate=80]")
    await asyncio.sleep(0.3)  # a few tokens in

    async with session(service) as ws:
        await send(ws, {"type": "subscribe", "id": body["id"], "ref": "w"})
        assert await recv(ws) == {"type": "subscribed", "ref": "w", "id": body["id"]}
        received = await events_until_done(ws, body["id"])

    assert received[0]["type"] == "snapshot"
    assert_gap_free(received)
    final = await generation(service, body["id"])
    assert fold(received) == final["output"] == expected_text(80)


async def test_subscribe_to_finished_generation_at_or_after_done_gets_subscribed_only(
    service: Service,
) -> None:
    body = await create(service, prompt="short [fake tokens=5]")
    final = await wait_terminal(service, body["id"])

    async with session(service) as ws:
        await send(ws, {"type": "subscribe", "id": body["id"], "after": final["seq"], "ref": 1})
        await send(ws, {"type": "subscribe", "id": body["id"], "after": final["seq"] + 9, "ref": 2})

        # Longer than the idle check of a subscription (2 s), so a late event would show.
        later = await recv_for(ws, 2.5)

    assert later == [
        {"type": "subscribed", "ref": 1, "id": body["id"]},
        {"type": "subscribed", "ref": 2, "id": body["id"]},
    ]


async def test_subscribe_just_before_done_gets_only_done(service: Service) -> None:
    body = await create(service, prompt="short [fake tokens=5]")
    final = await wait_terminal(service, body["id"])

    async with session(service) as ws:
        await send(ws, {"type": "subscribe", "id": body["id"], "after": final["seq"] - 1})
        await recv_type(ws, "subscribed")
        received = await events_until_done(ws, body["id"])

    assert [(m["type"], m["seq"]) for m in received] == [("done", final["seq"])]


async def test_unsubscribe_stops_events_for_that_generation(service: Service) -> None:
    async with session(service) as ws:
        body = await generate(ws, "stop watching [fake tokens=600 rate=60]")
        await events(ws, body["id"], 3)

        await send(ws, {"type": "unsubscribe", "id": body["id"], "ref": "u"})
        reply, before = await recv_type(ws, "unsubscribed")
        assert reply == {"type": "unsubscribed", "ref": "u", "id": body["id"]}
        assert all(m["id"] == body["id"] and m["type"] == "delta" for m in before), before

        later = await recv_for(ws, 2.5)
        assert later == []
        # ...while the generation went on producing events.
        assert (await generation(service, body["id"]))["status"] == "running"
    async with rest(service) as client:
        await client.post(f"/api/v1/generations/{body['id']}/cancel")


async def test_cancel_gets_ack_then_every_subscriber_gets_done_cancelled(
    service: Service,
) -> None:
    async with session(service) as owner, session(service) as watcher:
        body = await generate(owner, "stop me [fake tokens=2000 rate=50]")
        await send(watcher, {"type": "subscribe", "id": body["id"]})
        await recv_type(watcher, "subscribed")
        first = await events(owner, body["id"], 3)

        await send(owner, {"type": "cancel", "id": body["id"], "ref": "c"})
        ack, before_ack = await recv_type(owner, "ack")
        assert ack == {"type": "ack", "ref": "c", "id": body["id"]}

        owner_stream = first + before_ack + await events_until_done(owner, body["id"])
        watcher_stream = await events_until_done(watcher, body["id"])

    final = await generation(service, body["id"])
    assert final["status"] == "cancelled"
    for stream in (owner_stream, watcher_stream):
        assert_gap_free(stream)
        done = stream[-1]
        assert (done["status"], done["finish_reason"]) == ("cancelled", "cancelled")
        assert done["seq"] == final["seq"]
        assert fold(stream) == final["output"]
    assert len(final["output"]) < len(expected_text(2000))


async def test_cancel_of_finished_generation_is_acked_and_changes_nothing(
    service: Service,
) -> None:
    body = await create(service, prompt="done already [fake tokens=5]")
    final = await wait_terminal(service, body["id"])

    async with session(service) as ws:
        await send(ws, {"type": "cancel", "id": body["id"], "ref": "late"})
        assert await recv(ws) == {"type": "ack", "ref": "late", "id": body["id"]}

    assert await generation(service, body["id"]) == final


async def test_two_generations_multiplexed_on_one_connection_each_fold_to_their_output(
    service: Service,
) -> None:
    async with session(service) as ws:
        await send(ws, {"type": "generate", "ref": "a", "prompt": "one [fake tokens=120 rate=50]"})
        await send(ws, {"type": "generate", "ref": "b", "prompt": "two [fake tokens=60 rate=50]"})
        created: dict[str, str] = {}
        arrival: list[Message] = []
        while len(created) < 2:
            message = await recv(ws)
            if message["type"] == "created":
                created[message["ref"]] = message["generation"]["id"]
            else:
                arrival.append(message)
        assert created["a"] != created["b"]
        arrival += await events_in_arrival_order(ws, created["a"], created["b"])

    for ref, tokens in (("a", 120), ("b", 60)):
        stream = [m for m in arrival if m["id"] == created[ref]]
        assert stream[0]["type"] == "snapshot"
        assert_gap_free(stream)
        final = await generation(service, created[ref])
        assert fold(stream) == final["output"] == expected_text(tokens)
    # Both streamed at once: deltas of the two alternate before the first `done`.
    first_done = next(i for i, m in enumerate(arrival) if m["type"] == "done")
    live = [m["id"] for m in arrival[:first_done] if m["type"] == "delta"]
    assert sum(1 for a, b in itertools.pairwise(live) if a != b) >= 2, live


# -- disconnect, reconnect, resume ---------------------------------------------------------


async def test_reconnect_mid_stream_and_subscribe_after_last_seq_loses_nothing(
    service: Service,
) -> None:
    async with session(service) as ws:
        body = await generate(ws, "resume me [fake tokens=200 rate=100]")
        first = await events(ws, body["id"], 10)
    assert first[-1]["type"] == "delta"  # the generation is still running
    last_seq = first[-1]["seq"]

    async with session(service) as ws:
        await send(ws, {"type": "subscribe", "id": body["id"], "after": last_seq})
        await recv_type(ws, "subscribed")
        rest_of_it = await events_until_done(ws, body["id"])

    assert rest_of_it[0]["seq"] == last_seq + 1
    assert_gap_free(first + rest_of_it)
    final = await generation(service, body["id"])
    assert fold(first + rest_of_it) == final["output"] == expected_text(200)


async def test_resume_across_websocket_then_sse_then_websocket_loses_nothing(
    service: Service, alice: httpx.Client
) -> None:
    async with session(service) as ws:
        body = await generate(ws, "switch [fake tokens=250 rate=100]")
        over_ws = await events(ws, body["id"], 6)

    status, frames, _ = await asyncio.to_thread(
        stream_events, alice, body["id"], last_event_id=over_ws[-1]["seq"], stop_after=6
    )
    assert status == 200
    over_sse = messages(frames)
    assert over_sse[0]["seq"] == over_ws[-1]["seq"] + 1
    assert over_sse[-1]["type"] == "delta"

    async with session(service) as ws:
        await send(ws, {"type": "subscribe", "id": body["id"], "after": over_sse[-1]["seq"]})
        await recv_type(ws, "subscribed")
        over_ws_again = await events_until_done(ws, body["id"])

    everything = over_ws + over_sse + over_ws_again
    assert_gap_free(everything)
    final = await generation(service, body["id"])
    assert fold(everything) == final["output"] == expected_text(250)


# -- slow consumers ------------------------------------------------------------------------


async def test_client_that_stops_reading_is_closed_4008_and_resumes_losing_nothing(
    limited_service: Service,
) -> None:
    """WS_MAX_BUFFER is 64 KiB on this service. The client floods `subscribe` frames for a
    large finished generation (each reply is a ~28 KB snapshot and `done`) and reads nothing,
    with a 4 KiB receive window: once the kernel's buffers (about 4 MB) are full, the server's
    own buffer grows past 64 KiB and it closes the connection with 4008."""
    body = await create(limited_service, "sam", prompt="long [fake tokens=4096]", max_tokens=4096)
    final = await wait_terminal(limited_service, body["id"], "sam")
    assert final["output"] == expected_text(4096)
    subscribes = 400  # ~11 MB of replies

    port = int(limited_service.url().rsplit(":", 1)[1])
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    # ping_interval=None: a client that reads nothing would also miss its own pongs.
    async with open_ws(
        limited_service, sock=sock, max_size=None, ping_interval=None, close_timeout=30
    ) as ws:
        await send(ws, {"type": "auth", "token": make_token("sam")})
        for n in range(subscribes):
            await send(ws, {"type": "subscribe", "id": body["id"], "after": 0, "ref": n})
        # The server handles a connection's frames in order, also after it starts closing:
        # once this generation exists, every reply above has been written or dropped.
        await send(ws, {"type": "generate", "prompt": "marker [fake tokens=1]"})
        await wait_for_prompt(limited_service, "sam", "marker [fake tokens=1]")
        received, code = await frames_until_close(ws, timeout_s=30)

    assert code == 4008
    assert received[0]["type"] == "auth.ok"
    replies = received[1:]
    assert sum(1 for m in replies if m["type"] == "subscribed") < subscribes  # cut short
    # What arrived is whole and in order: subscribed, snapshot, done, again and again.
    for index, message in enumerate(replies):
        assert message["type"] == ("subscribed", "snapshot", "done")[index % 3], message
    last_snapshot = max(i for i, m in enumerate(replies) if m["type"] == "snapshot")
    kept = [m for m in replies[last_snapshot:] if m["type"] in EVENT_TYPES]

    async with session(limited_service, "sam") as ws:
        await send(ws, {"type": "subscribe", "id": body["id"], "after": kept[-1]["seq"]})
        await recv_type(ws, "subscribed")
        if kept[-1]["type"] != "done":
            kept += await events_until_done(ws, body["id"])

    assert kept[-1]["type"] == "done"
    assert fold(kept) == final["output"]


async def wait_for_prompt(
    service: Service, username: str, prompt: str, timeout_s: float = 60
) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    async with rest(service, username) as client:
        while True:
            listed = (await client.get("/api/v1/generations")).json()["results"]
            if any(g["prompt"] == prompt for g in listed):
                return
            assert asyncio.get_running_loop().time() < deadline, listed
            await asyncio.sleep(0.1)


# -- shutdown ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def doomed_service(fake_llm: FakeLLM) -> Iterator[Service]:
    """A service of its own: these tests stop its Daphne process."""
    instance = Service(fake_llm).start()
    yield instance
    instance.stop()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_signal_to_daphne_closes_open_websockets_with_1001(
    doomed_service: Service, sig: signal.Signals
) -> None:
    web = doomed_service.webs[0]
    if web is None or web.poll() is not None:
        await asyncio.to_thread(doomed_service.start_web, 0)
        web = doomed_service.webs[0]
    assert web is not None

    async with session(doomed_service) as idle, session(doomed_service) as watching:
        body = await generate(watching, "long [fake tokens=3000 rate=50]")
        await events(watching, body["id"], 2)

        web.send_signal(sig)

        codes = await asyncio.gather(close_code(idle, 15), close_code(watching, 15))

    assert list(codes) == [1001, 1001]
    assert await asyncio.to_thread(web.wait, 20) is not None
