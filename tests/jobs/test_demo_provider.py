"""The offline `demo` provider, through a service started with LLM_PROVIDER=demo."""

from __future__ import annotations

from jobs.events import fold
from jobs.providers.demo import compose_answer, tokenize
from tests.conftest import create, wait_terminal
from tests.harness import FakeLLM, Service
from tests.jobs.support import assert_gap_free, requests_with, unique, watch


def test_demo_provider_streams_a_plausible_answer_with_usage(
    demo_service: Service, fake_llm: FakeLLM
) -> None:
    prompt = unique("How do I make a service resilient?")
    with demo_service.client("alice") as client:
        generation = create(client, prompt)
        subscriber = watch(demo_service, generation["id"])

        final = wait_terminal(client, generation["id"])

    received = subscriber.value()
    assert final["status"] == "completed"
    assert final["finish_reason"] == "stop"
    # Labelled: a made-up answer must not pass for a model's.
    assert final["provider"] == "demo"
    answer = compose_answer(prompt)
    assert final["output"] == answer
    assert "resilient" in answer and len(answer.split()) > 40
    prompt_tokens = len(tokenize(prompt))
    assert final["usage"] == {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": len(tokenize(answer)),
        "total_tokens": prompt_tokens + len(tokenize(answer)),
    }
    # Streamed, not delivered in one piece.
    assert sum(message["type"] == "delta" for message in received) > 5
    assert_gap_free(received)
    assert fold(received) == final["output"]
    assert requests_with(fake_llm.requests(), prompt) == []
