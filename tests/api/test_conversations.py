"""Conversations over REST (docs/protocol.md "Conversations"): the history the provider
receives for a follow-up, a branch, a truncated history and a failed ancestor, as the fake
provider recorded it; every endpoint's errors; deletion removing rows and replay buffers."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.api.support import UNKNOWN_GENERATION_ID, assert_error, fresh_rate_window
from tests.conftest import create, wait_terminal
from tests.harness import FakeLLM, Service, wait_until
from tests.tier_env import TIER

UNKNOWN_CONVERSATION_ID = "conv_" + "A" * 22


def sent_for(fake_llm: FakeLLM, last_prompt: str) -> list[list[dict[str, Any]]]:
    """The message lists the provider received for requests whose new prompt is this one."""
    return [
        request["messages"]
        for request in fake_llm.requests()
        if request["messages"] and request["messages"][-1]["content"] == last_prompt
    ]


def turn(client: httpx.Client, prompt: str, **fields: Any) -> dict[str, Any]:
    """A turn, run to its end."""
    generation = create(client, prompt, **fields)
    return wait_terminal(client, generation["id"])


def conversation(client: httpx.Client, conversation_id: str) -> dict[str, Any]:
    response = client.get(f"/api/v1/conversations/{conversation_id}")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def user(prompt: str) -> dict[str, str]:
    return {"role": "user", "content": prompt}


def assistant(output: str) -> dict[str, str]:
    return {"role": "assistant", "content": output}


# -- the history the provider receives --------------------------------------------------------


def test_a_generation_without_conversation_fields_starts_a_conversation_of_its_own(
    alice: httpx.Client, fake_llm: FakeLLM
) -> None:
    prompt = f"single prompt {uuid.uuid4().hex} [fake tokens=3]"

    first = turn(alice, prompt)

    assert first["conversation_id"].startswith("conv_")
    assert first["parent_id"] is None
    assert sent_for(fake_llm, prompt) == [[user(prompt)]]
    view = conversation(alice, first["conversation_id"])
    assert view["title"] == prompt
    assert [t["id"] for t in view["turns"]] == [first["id"]]
    assert view["current_turn_id"] == first["id"]


def test_a_follow_up_sends_the_earlier_prompt_and_answer(
    alice: httpx.Client, fake_llm: FakeLLM
) -> None:
    marker = uuid.uuid4().hex
    first_prompt = f"name three colours {marker} [fake tokens=6]"
    first = turn(alice, first_prompt)
    follow_up = f"make it shorter {marker}"

    second = turn(alice, follow_up, conversation_id=first["conversation_id"])

    assert first["output"]
    assert second["status"] == "completed"
    assert second["parent_id"] == first["id"]
    assert second["conversation_id"] == first["conversation_id"]
    assert sent_for(fake_llm, follow_up) == [
        [user(first_prompt), assistant(first["output"]), user(follow_up)]
    ]
    # The provider's prompt tokens (what quotas and usage count) include the history.
    assert second["usage"]["prompt_tokens"] == sum(
        len(message["content"].split())
        for message in [user(first_prompt), assistant(first["output"]), user(follow_up)]
    )
    view = conversation(alice, first["conversation_id"])
    assert view["current_path"] == [first["id"], second["id"]]
    assert [(t["id"], t["status"], t["output"]) for t in view["turns"]] == [
        (first["id"], "completed", first["output"]),
        (second["id"], "completed", second["output"]),
    ]


def test_a_conversation_system_prompt_comes_first_in_every_turn(
    alice: httpx.Client, fake_llm: FakeLLM
) -> None:
    marker = uuid.uuid4().hex
    created = alice.post(
        "/api/v1/conversations", json={"title": "terse", "system": f"Be terse {marker}"}
    )
    assert created.status_code == 201, created.text
    conversation_id = created.json()["id"]
    first_prompt = f"first {marker} [fake tokens=4]"
    first = turn(alice, first_prompt, conversation_id=conversation_id)
    second_prompt = f"second {marker}"

    second = turn(alice, second_prompt, conversation_id=conversation_id)

    assert first["system"] == second["system"] == f"Be terse {marker}"
    assert sent_for(fake_llm, second_prompt) == [
        [
            {"role": "system", "content": f"Be terse {marker}"},
            user(first_prompt),
            assistant(first["output"]),
            user(second_prompt),
        ]
    ]
    assert conversation(alice, conversation_id)["title"] == "terse"


def test_regenerate_and_edit_are_branches_that_the_user_switches_between(
    alice: httpx.Client, fake_llm: FakeLLM
) -> None:
    marker = uuid.uuid4().hex
    first_prompt = f"root {marker} [fake tokens=5]"
    first = turn(alice, first_prompt)
    conversation_id = first["conversation_id"]
    answer_a = turn(alice, f"branch a {marker}", conversation_id=conversation_id)
    # Regenerate: a new turn with the same parent as answer_a; edit of the first prompt:
    # parent null.
    regenerated_prompt = f"branch a {marker} again"
    answer_b = turn(alice, regenerated_prompt, parent_id=first["id"])
    edited_prompt = f"root edited {marker} [fake tokens=5]"
    edited = turn(alice, edited_prompt, conversation_id=conversation_id, parent_id=None)

    assert answer_b["parent_id"] == first["id"]
    assert sent_for(fake_llm, regenerated_prompt) == [
        [user(first_prompt), assistant(first["output"]), user(regenerated_prompt)]
    ]
    assert edited["parent_id"] is None
    assert sent_for(fake_llm, edited_prompt) == [[user(edited_prompt)]]
    view = conversation(alice, conversation_id)
    assert view["current_turn_id"] == edited["id"]
    assert view["current_path"] == [edited["id"]]
    assert {(b["turn_id"], b["turns"], b["current"]) for b in view["branches"]} == {
        (answer_a["id"], 2, False),
        (answer_b["id"], 2, False),
        (edited["id"], 1, True),
    }

    # Switching is a request: naming the first turn picks its newest branch (answer_b);
    # naming answer_a picks that one, and the next follow-up continues it.
    switched = alice.patch(
        f"/api/v1/conversations/{conversation_id}", json={"current_turn_id": first["id"]}
    )
    assert switched.status_code == 200, switched.text
    assert switched.json()["current_path"] == [first["id"], answer_b["id"]]
    switched = alice.patch(
        f"/api/v1/conversations/{conversation_id}", json={"current_turn_id": answer_a["id"]}
    )
    assert switched.json()["current_path"] == [first["id"], answer_a["id"]]
    follow_up = f"continue a {marker}"
    continued = turn(alice, follow_up, conversation_id=conversation_id)
    assert continued["parent_id"] == answer_a["id"]
    assert sent_for(fake_llm, follow_up) == [
        [
            user(first_prompt),
            assistant(first["output"]),
            user(f"branch a {marker}"),
            assistant(answer_a["output"]),
            user(follow_up),
        ]
    ]


def test_a_failed_ancestor_contributes_the_output_its_user_saw(
    alice: httpx.Client, fake_llm: FakeLLM
) -> None:
    marker = uuid.uuid4().hex
    # Every attempt drops the stream after 6 tokens: the generation fails with that text.
    failing_prompt = f"failing {marker} [fake tokens=30 drop=6]"
    failed = turn(alice, failing_prompt)
    follow_up = f"after the failure {marker}"

    # The follow-up's history holds the directive too: 4 tokens stay under the drop.
    second = turn(alice, follow_up, conversation_id=failed["conversation_id"], max_tokens=4)

    assert failed["status"] == "failed"
    assert failed["output"]
    assert second["status"] == "completed"
    assert sent_for(fake_llm, follow_up) == [
        [user(failing_prompt), assistant(failed["output"]), user(follow_up)]
    ]


def test_a_cancelled_ancestor_with_no_output_contributes_only_its_prompt(
    alice: httpx.Client, fake_llm: FakeLLM
) -> None:
    marker = uuid.uuid4().hex
    silent_prompt = f"silent {marker} [fake tokens=5 ttft=30000]"
    generation = create(alice, silent_prompt)
    wait_until(lambda: sent_for(fake_llm, silent_prompt), timeout_s=20)
    alice.post(f"/api/v1/generations/{generation['id']}/cancel")
    cancelled = wait_terminal(alice, generation["id"])
    follow_up = f"after the cancel {marker}"

    second = create(alice, follow_up, conversation_id=cancelled["conversation_id"])
    # What the provider received is all this needs; the history's directive would make the
    # answer wait 30 s for its first token.
    wait_until(lambda: sent_for(fake_llm, follow_up), timeout_s=20)
    alice.post(f"/api/v1/generations/{second['id']}/cancel")

    assert cancelled["status"] == "cancelled"
    assert cancelled["output"] == ""
    assert sent_for(fake_llm, follow_up) == [[user(silent_prompt), user(follow_up)]]


# -- a small context budget --------------------------------------------------------------------

SMALL_BUDGET_MODEL = "gpt-4o"
SMALL_BUDGET_TOKENS = 60
SMALL_MAX_TURNS = 4


@pytest.fixture(scope="module")
def small_budget(fake_llm: FakeLLM) -> Iterator[Service]:
    instance = Service(
        fake_llm,
        env={
            "CONTEXT_BUDGETS": f"{SMALL_BUDGET_MODEL}={SMALL_BUDGET_TOKENS}",
            "MAX_CONVERSATION_TURNS": str(SMALL_MAX_TURNS),
        },
    ).start()
    yield instance
    instance.stop()


def test_a_history_over_the_budget_leaves_out_the_oldest_turns(
    small_budget: Service, fake_llm: FakeLLM
) -> None:
    marker = uuid.uuid4().hex[:6]
    # Each earlier turn costs about 6 + 4 (prompt) + 8 + 4 (answer) = 22 tokens of the 60;
    # the new prompt and its framing about 10: two earlier turns fit, three do not.
    prompts = [f"q{n} {marker} [fake tokens=8]" for n in range(1, 4)]
    with small_budget.client("alice") as client:
        first = turn(client, prompts[0], model=SMALL_BUDGET_MODEL)
        turns = [first]
        for prompt in prompts[1:]:
            turns.append(
                turn(
                    client,
                    prompt,
                    model=SMALL_BUDGET_MODEL,
                    conversation_id=first["conversation_id"],
                )
            )
        last_prompt = f"q4 {marker}"
        turn(
            client,
            last_prompt,
            model=SMALL_BUDGET_MODEL,
            conversation_id=first["conversation_id"],
            max_tokens=3,
        )

    (messages,) = sent_for(fake_llm, last_prompt)
    assert messages == [
        user(prompts[1]),
        assistant(turns[1]["output"]),
        user(prompts[2]),
        assistant(turns[2]["output"]),
        user(last_prompt),
    ]


def test_a_prompt_that_cannot_fit_alone_is_prompt_too_long(
    small_budget: Service, fake_llm: FakeLLM
) -> None:
    marker = uuid.uuid4().hex
    too_long = f"{marker} " + "word " * SMALL_BUDGET_TOKENS
    with small_budget.client("alice") as client:
        refused = client.post(
            "/api/v1/generations", json={"prompt": too_long, "model": SMALL_BUDGET_MODEL}
        )
        # The same prompt fits the default budget of another model.
        accepted = client.post("/api/v1/generations", json={"prompt": too_long, "max_tokens": 2})
        first = turn(client, f"short {marker} [fake tokens=2]", model=SMALL_BUDGET_MODEL)
        follow_up = client.post(
            "/api/v1/generations",
            json={
                "prompt": too_long,
                "model": SMALL_BUDGET_MODEL,
                "conversation_id": first["conversation_id"],
            },
        )

    assert "prompt" in assert_error(refused, 400, "prompt_too_long")
    assert accepted.status_code == 202, accepted.text
    assert_error(follow_up, 400, "prompt_too_long")
    assert not [
        r for r in fake_llm.requests() if r["model"] == SMALL_BUDGET_MODEL and too_long in str(r)
    ]


def test_a_conversation_holds_a_bounded_number_of_turns(small_budget: Service) -> None:
    with small_budget.client(f"turns-{uuid.uuid4().hex[:8]}") as client:
        first = turn(client, "one [fake tokens=1]")
        for n in range(SMALL_MAX_TURNS - 1):
            turn(client, f"more {n}", conversation_id=first["conversation_id"])
        refused = client.post(
            "/api/v1/generations",
            json={"prompt": "one too many", "conversation_id": first["conversation_id"]},
        )

    details = assert_error(refused, 409, "conversation_full")
    assert details["conversation_id"] == first["conversation_id"]


# -- the endpoints and their errors -------------------------------------------------------------


def test_create_list_read_rename_conversations(service: Service) -> None:
    with service.client(f"lister-{uuid.uuid4().hex[:8]}") as client:
        created = [
            client.post("/api/v1/conversations", json={"title": f"chat {n}"}) for n in range(3)
        ]
        untitled = client.post("/api/v1/conversations", json={})
        first_page = client.get("/api/v1/conversations", params={"limit": 2})
        second_page = client.get(
            "/api/v1/conversations",
            params={"limit": 3, "cursor": first_page.json()["next_cursor"]},
        )
        renamed = client.patch(
            f"/api/v1/conversations/{untitled.json()['id']}", json={"title": "  renamed  "}
        )
        titled_by_prompt = turn(
            client, "what is a tree? [fake tokens=1]", conversation_id=untitled.json()["id"]
        )

    assert [r.status_code for r in created] == [201, 201, 201]
    assert created[0].headers["location"] == f"/api/v1/conversations/{created[0].json()['id']}"
    assert created[0].json()["turns"] == [] and created[0].json()["current_turn_id"] is None
    ids_newest_first = [untitled.json()["id"]] + [r.json()["id"] for r in reversed(created)]
    assert [c["id"] for c in first_page.json()["results"]] == ids_newest_first[:2]
    assert [c["id"] for c in second_page.json()["results"]] == ids_newest_first[2:]
    assert second_page.json()["next_cursor"] is None
    assert renamed.json()["title"] == "renamed"
    # A title set by the user is kept; an empty one is filled from the first prompt.
    assert titled_by_prompt["conversation_id"] == untitled.json()["id"]


def test_an_untitled_conversation_is_titled_by_its_first_prompt(alice: httpx.Client) -> None:
    created = alice.post("/api/v1/conversations", json={}).json()
    turn(alice, "  how do   tides work? [fake tokens=1]", conversation_id=created["id"])

    assert conversation(alice, created["id"])["title"] == "how do tides work? [fake tokens=1]"


def test_another_users_conversation_and_turns_are_not_found_everywhere(
    alice: httpx.Client, bob: httpx.Client
) -> None:
    bobs = turn(bob, "bob's secret [fake tokens=2]")
    bobs_conversation = bobs["conversation_id"]
    path = f"/api/v1/conversations/{bobs_conversation}"

    for response in (
        alice.get(path),
        alice.patch(path, json={"title": "mine now"}),
        alice.delete(path),
        alice.post(
            "/api/v1/generations", json={"prompt": "x", "conversation_id": bobs_conversation}
        ),
        alice.post("/api/v1/generations", json={"prompt": "x", "parent_id": bobs["id"]}),
        alice.get(f"/api/v1/conversations/{UNKNOWN_CONVERSATION_ID}"),
        alice.get("/api/v1/conversations/not-an-id"),
        alice.post("/api/v1/generations", json={"prompt": "x", "conversation_id": "conv_bad"}),
        alice.post("/api/v1/generations", json={"prompt": "x", "parent_id": UNKNOWN_GENERATION_ID}),
    ):
        assert_error(response, 404, "not_found")
    assert conversation(bob, bobs_conversation)["title"] == "bob's secret [fake tokens=2]"
    # Alice's own conversation cannot switch to Bob's turn either.
    mine = turn(alice, "alice's [fake tokens=1]")
    assert_error(
        alice.patch(
            f"/api/v1/conversations/{mine['conversation_id']}",
            json={"current_turn_id": bobs["id"]},
        ),
        404,
        "not_found",
    )


def test_a_turn_whose_parent_is_still_running_is_refused(alice: httpx.Client) -> None:
    running = create(alice, f"slow {uuid.uuid4().hex} [fake tokens=400 rate=20]")

    refused = alice.post(
        "/api/v1/generations",
        json={"prompt": "too soon", "conversation_id": running["conversation_id"]},
    )
    refused_by_parent = alice.post(
        "/api/v1/generations", json={"prompt": "too soon", "parent_id": running["id"]}
    )
    alice.post(f"/api/v1/generations/{running['id']}/cancel")

    details = assert_error(refused, 409, "parent_not_finished")
    assert details["parent_id"] == running["id"]
    assert details["status"] in ("queued", "running")
    assert_error(refused_by_parent, 409, "parent_not_finished")
    turns = conversation(alice, running["conversation_id"])["turns"]
    assert [t["id"] for t in turns] == [running["id"]]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"prompt": "x", "conversation_id": 5}, "conversation_id"),
        ({"prompt": "x", "parent_id": ["gen_"]}, "parent_id"),
    ],
)
def test_bad_conversation_fields_of_a_generation_are_invalid_request(
    alice: httpx.Client, body: dict[str, Any], field: str
) -> None:
    assert field in assert_error(
        alice.post("/api/v1/generations", json=body), 400, "invalid_request"
    )


def test_bad_conversation_requests_are_refused_with_their_field(alice: httpx.Client) -> None:
    mine = turn(alice, "mine [fake tokens=1]")
    other = turn(alice, "other [fake tokens=1]")
    path = f"/api/v1/conversations/{mine['conversation_id']}"
    cases = [
        (
            alice.post("/api/v1/conversations", json={"colour": "red"}),
            400,
            "invalid_request",
            "colour",
        ),
        (alice.post("/api/v1/conversations", json={"title": 3}), 400, "invalid_request", "title"),
        (
            alice.post("/api/v1/conversations", json={"title": "t" * 201}),
            400,
            "invalid_request",
            "title",
        ),
        (
            alice.post("/api/v1/conversations", json={"system": "s" * 9000}),
            400,
            "prompt_too_long",
            "system",
        ),
        (alice.patch(path, json={"colour": "red"}), 400, "invalid_request", "colour"),
        (alice.patch(path, json={"current_turn_id": 7}), 400, "invalid_request", "current_turn_id"),
        (alice.patch(path, json={"current_turn_id": other["id"]}), 404, "not_found", None),
        (
            alice.patch(path, content=b"[1", headers={"content-type": "application/json"}),
            400,
            "invalid_json",
            None,
        ),
        (alice.get("/api/v1/conversations", params={"limit": 0}), 400, "invalid_request", "limit"),
        (
            alice.get("/api/v1/conversations", params={"cursor": "nope"}),
            400,
            "invalid_request",
            "cursor",
        ),
        (alice.get("/api/v1/conversations", params={"page": 2}), 400, "invalid_request", "page"),
        (alice.put(path, json={}), 405, "method_not_allowed", None),
        # The parent is in another conversation than the one named.
        (
            alice.post(
                "/api/v1/generations",
                json={
                    "prompt": "x",
                    "conversation_id": mine["conversation_id"],
                    "parent_id": other["id"],
                },
            ),
            400,
            "invalid_request",
            "parent_id",
        ),
        # The system prompt belongs to the conversation.
        (
            alice.post(
                "/api/v1/generations",
                json={"prompt": "x", "conversation_id": mine["conversation_id"], "system": "new"},
            ),
            400,
            "invalid_request",
            "system",
        ),
    ]
    for response, status, code, field in cases:
        details = assert_error(response, status, code)
        if field is not None:
            assert field in details, (code, details)
    assert len(conversation(alice, mine["conversation_id"])["turns"]) == 1


def test_deleting_a_conversation_removes_its_generations_and_replay_buffers(
    service: Service, alice: httpx.Client
) -> None:
    first = turn(alice, f"to forget {uuid.uuid4().hex} [fake tokens=5]")
    second = turn(alice, "and this [fake tokens=5]", conversation_id=first["conversation_id"])
    # A new first turn, so that its own directive applies (the fake provider takes the first
    # directive in the messages, which a history would hold): it is still streaming below.
    running = create(
        alice,
        "still streaming [fake tokens=400 rate=20]",
        conversation_id=first["conversation_id"],
        parent_id=None,
    )
    wait_until(lambda: alice.get(f"/api/v1/generations/{running['id']}").json()["seq"] > 0, 20)
    assert alice.get(f"/api/v1/generations/{running['id']}").json()["status"] == "running"
    ids = [first["id"], second["id"], running["id"]]

    deleted = alice.delete(f"/api/v1/conversations/{first['conversation_id']}")

    assert deleted.status_code == 204
    assert_error(alice.get(f"/api/v1/conversations/{first['conversation_id']}"), 404, "not_found")
    for generation_id in ids:
        assert_error(alice.get(f"/api/v1/generations/{generation_id}"), 404, "not_found")
        assert_error(alice.get(f"/api/v1/generations/{generation_id}/events"), 404, "not_found")
    listed = alice.get("/api/v1/generations", params={"limit": 100}).json()["results"]
    assert not {g["id"] for g in listed} & set(ids)
    assert_error(
        alice.delete(f"/api/v1/conversations/{first['conversation_id']}"), 404, "not_found"
    )
    if TIER == "distributed":
        import redis

        client: Any = redis.Redis.from_url(service.env["REDIS_URL"])
        # The running turn's worker may still be winding down; nothing of it comes back.
        for _ in range(10):
            keys = [k for g in ids for k in client.keys(f"*{g}*") if b"cancel" not in k]
            assert keys == []
            time.sleep(0.2)


def test_conversation_endpoints_need_a_token(anonymous: httpx.Client) -> None:
    path = f"/api/v1/conversations/{UNKNOWN_CONVERSATION_ID}"
    for response in (
        anonymous.get("/api/v1/conversations"),
        anonymous.post("/api/v1/conversations", json={}),
        anonymous.get(path),
        anonymous.patch(path, json={"title": "x"}),
        anonymous.delete(path),
    ):
        assert_error(response, 401, "unauthorized")


def test_requests_refused_for_their_conversation_fields_do_not_spend_the_rate_limit(
    fake_llm: FakeLLM,
) -> None:
    limited = Service(fake_llm, env={"RATE_LIMIT_PER_MINUTE": "2"}).start()
    try:
        fresh_rate_window()
        with limited.client("rita") as client:
            refused = [
                client.post(
                    "/api/v1/generations",
                    json={"prompt": "x", "conversation_id": UNKNOWN_CONVERSATION_ID},
                )
                for _ in range(3)
            ]
            first = turn(client, "one [fake tokens=1]")
            second = client.post(
                "/api/v1/generations",
                json={"prompt": "two", "conversation_id": first["conversation_id"]},
            )
            third = client.post("/api/v1/generations", json={"prompt": "three"})
    finally:
        limited.stop()

    for response in refused:
        assert_error(response, 404, "not_found")
    assert second.status_code == 202, second.text
    assert_error(third, 429, "rate_limited")


def test_an_idempotent_repeat_of_a_turn_returns_it_and_other_conversation_fields_conflict(
    alice: httpx.Client,
) -> None:
    first = turn(alice, f"idempotent root {uuid.uuid4().hex} [fake tokens=1]")
    key = {"Idempotency-Key": uuid.uuid4().hex}
    body = {
        "prompt": "follow [fake tokens=300 rate=30]",
        "conversation_id": first["conversation_id"],
    }

    created = alice.post("/api/v1/generations", json=body, headers=key)
    # While that turn runs, a repeat is the same turn, not parent_not_finished.
    repeated = alice.post("/api/v1/generations", json=body, headers=key)
    conflict = alice.post("/api/v1/generations", json={**body, "parent_id": None}, headers=key)
    alice.post(f"/api/v1/generations/{created.json()['id']}/cancel")

    assert created.status_code == 202, created.text
    assert repeated.status_code == 200 and repeated.json()["id"] == created.json()["id"]
    assert_error(conflict, 409, "idempotency_conflict")
    assert len(conversation(alice, first["conversation_id"])["turns"]) == 2
