"""Conversations on the WebSocket (docs/protocol.md "Conversations"): `generate` with the
conversation fields, and a conversation subscription that learns of turns started on another
connection, resuming after a reconnect from the last turn it saw."""

from __future__ import annotations

import uuid

from tests.harness import FakeLLM, Service
from tests.realtime.wsclient import (
    assert_gap_free,
    events_until_done,
    generation,
    recv,
    recv_for,
    recv_type,
    rest,
    send,
    session,
    wait_terminal,
)


async def test_generate_with_a_conversation_sends_the_history(
    service: Service, fake_llm: FakeLLM
) -> None:
    marker = uuid.uuid4().hex
    first_prompt = f"ws first {marker} [fake tokens=5]"
    follow_up = f"ws follow-up {marker}"
    async with session(service) as ws:
        await send(ws, {"type": "generate", "ref": 1, "prompt": first_prompt})
        created, _ = await recv_type(ws, "created")
        first = created["generation"]
        await events_until_done(ws, first["id"])
        first = await wait_terminal(service, first["id"])
        await send(
            ws,
            {
                "type": "generate",
                "ref": 2,
                "prompt": follow_up,
                "conversation_id": first["conversation_id"],
            },
        )
        created, _ = await recv_type(ws, "created")
        second = created["generation"]
        await events_until_done(ws, second["id"])
        # A turn whose parent is still running is an error frame; the connection stays. (A
        # conversation of its own: in this one, the first prompt's directive would win.)
        await send(
            ws,
            {"type": "generate", "ref": 3, "prompt": f"slow {marker} [fake tokens=400 rate=20]"},
        )
        created, _ = await recv_type(ws, "created")
        slow = created["generation"]
        await send(
            ws, {"type": "generate", "ref": 4, "prompt": "too soon", "parent_id": slow["id"]}
        )
        error, _ = await recv_type(ws, "error")
        await send(ws, {"type": "cancel", "ref": 5, "id": slow["id"]})

    assert second["parent_id"] == first["id"]
    sent = [r["messages"] for r in fake_llm.requests() if r["messages"][-1]["content"] == follow_up]
    assert sent == [
        [
            {"role": "user", "content": first_prompt},
            {"role": "assistant", "content": first["output"]},
            {"role": "user", "content": follow_up},
        ]
    ]
    assert error["ref"] == 4 and error["code"] == "parent_not_finished", error


async def test_a_conversation_subscriber_learns_of_a_turn_started_on_another_connection(
    service: Service,
) -> None:
    marker = uuid.uuid4().hex
    async with session(service) as phone, session(service) as laptop:
        await send(
            phone, {"type": "generate", "ref": "p1", "prompt": f"phone {marker} [fake tokens=3]"}
        )
        created, _ = await recv_type(phone, "created")
        first = created["generation"]
        conversation_id = first["conversation_id"]
        await events_until_done(phone, first["id"])

        await send(
            laptop,
            {"type": "subscribe_conversation", "ref": "l1", "conversation_id": conversation_id},
        )
        subscribed = await recv(laptop)
        known = await recv(laptop)  # after 0: every turn so far
        # The phone sends the next question; the open laptop hears of it and streams it.
        await send(
            phone,
            {
                "type": "generate",
                "ref": "p2",
                "prompt": f"next {marker} [fake tokens=40 rate=40]",
                "conversation_id": conversation_id,
            },
        )
        created, _ = await recv_type(phone, "created")
        second = created["generation"]
        announced, _ = await recv_type(laptop, "turn")
        await send(laptop, {"type": "subscribe", "ref": "l2", "id": announced["generation"]["id"]})
        _, before = await recv_type(laptop, "subscribed")
        streamed = await events_until_done(laptop, second["id"])
        last_seen = announced["seq"]

    assert subscribed == {
        "type": "conversation_subscribed",
        "ref": "l1",
        "conversation_id": conversation_id,
    }
    assert known["type"] == "turn" and known["seq"] == 1
    assert known["generation"]["id"] == first["id"]
    assert before == []
    assert announced["seq"] == 2
    assert announced["conversation_id"] == conversation_id
    assert announced["generation"]["id"] == second["id"]
    assert announced["generation"]["parent_id"] == first["id"]
    assert_gap_free(streamed)
    final = await generation(service, second["id"])
    text = "".join(e.get("text", "") for e in streamed if e["type"] in ("snapshot", "delta"))
    assert text == final["output"]

    # A reconnect resumes after the last turn it saw: a turn started while it was away comes,
    # and nothing it already had comes again.
    async with session(service) as phone:
        await send(
            phone,
            {
                "type": "generate",
                "prompt": f"while away {marker} [fake tokens=2]",
                "conversation_id": conversation_id,
            },
        )
        created, _ = await recv_type(phone, "created")
        third = created["generation"]
    async with session(service) as laptop:
        await send(
            laptop,
            {
                "type": "subscribe_conversation",
                "conversation_id": conversation_id,
                "after": last_seen,
            },
        )
        frames = await recv_for(laptop, 1.5)
    assert [f["type"] for f in frames] == ["conversation_subscribed", "turn"]
    assert frames[1]["seq"] == 3 and frames[1]["generation"]["id"] == third["id"]


async def test_conversation_subscription_errors_keep_the_connection_open(
    service: Service,
) -> None:
    async with session(service, "bob") as bob:
        await send(bob, {"type": "generate", "prompt": "bob's [fake tokens=1]"})
        created, _ = await recv_type(bob, "created")
        bobs_conversation = created["generation"]["conversation_id"]
    async with session(service) as ws:
        replies = []
        for ref, frame in enumerate(
            [
                {"type": "subscribe_conversation", "conversation_id": bobs_conversation},
                {"type": "subscribe_conversation", "conversation_id": "conv_" + "A" * 22},
                {"type": "subscribe_conversation"},
                {
                    "type": "subscribe_conversation",
                    "conversation_id": bobs_conversation,
                    "after": -1,
                },
                {"type": "generate", "prompt": "x", "conversation_id": bobs_conversation},
                {"type": "generate", "prompt": "x", "conversation_id": 12},
            ]
        ):
            await send(ws, {**frame, "ref": ref})
            replies.append(await recv(ws))
        await send(ws, {"type": "ping", "ref": "alive"})
        pong = await recv(ws)

    assert [(r["type"], r["ref"], r["code"]) for r in replies] == [
        ("error", 0, "not_found"),
        ("error", 1, "not_found"),
        ("error", 2, "invalid_request"),
        ("error", 3, "invalid_request"),
        ("error", 4, "not_found"),
        ("error", 5, "invalid_request"),
    ]
    assert pong == {"type": "pong", "ref": "alive"}


async def test_a_subscriber_hears_of_a_branch_switch_a_rename_and_the_deletion(
    service: Service,
) -> None:
    marker = uuid.uuid4().hex
    async with session(service) as phone, session(service) as laptop:
        await send(phone, {"type": "generate", "prompt": f"root {marker} [fake tokens=2]"})
        created, _ = await recv_type(phone, "created")
        root = created["generation"]
        await events_until_done(phone, root["id"])
        await send(phone, {"type": "generate", "prompt": "a", "parent_id": root["id"]})
        first_branch = (await recv_type(phone, "created"))[0]["generation"]
        await events_until_done(phone, first_branch["id"])
        await send(phone, {"type": "generate", "prompt": "b", "parent_id": root["id"]})
        second_branch = (await recv_type(phone, "created"))[0]["generation"]
        await events_until_done(phone, second_branch["id"])
        conversation_id = root["conversation_id"]
        await send(
            laptop,
            {"type": "subscribe_conversation", "conversation_id": conversation_id, "after": 3},
        )
        await recv_type(laptop, "conversation_subscribed")

        async with rest(service) as client:
            path = f"/api/v1/conversations/{conversation_id}"
            switched = await client.patch(path, json={"current_turn_id": first_branch["id"]})
            updated, _ = await recv_type(laptop, "conversation_updated")
            renamed = await client.patch(path, json={"title": "renamed"})
            updated_title, _ = await recv_type(laptop, "conversation_updated")
            deleted = await client.delete(path)
            gone, _ = await recv_type(laptop, "conversation_deleted")

    assert switched.status_code == renamed.status_code == 200
    assert updated["conversation_id"] == conversation_id
    assert updated["conversation"]["current_turn_id"] == first_branch["id"]
    assert updated_title["conversation"]["title"] == "renamed"
    assert deleted.status_code == 204
    assert gone == {"type": "conversation_deleted", "conversation_id": conversation_id}
