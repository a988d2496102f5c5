"""Token usage and the max_tokens limit, as the provider reports them."""

from __future__ import annotations

import httpx

from jobs.providers.demo import tokenize
from tests.conftest import create, wait_terminal
from tests.fake_openai import expected_text
from tests.jobs.support import unique


def test_provider_reported_usage_is_stored(alice: httpx.Client) -> None:
    system = "You answer in Greek-ish words."
    prompt = unique("count me, supercalifragilistic [fake tokens=37]")
    generation = create(alice, prompt, system=system)

    final = wait_terminal(alice, generation["id"])

    assert final["status"] == "completed"
    assert final["output"] == expected_text(37)
    # The fake counts prompt tokens as whitespace-separated words of every message.
    prompt_tokens = len(system.split()) + len(prompt.split())
    assert final["usage"] == {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": 37,
        "total_tokens": prompt_tokens + 37,
    }
    # The service's own estimate differs, so the figures above did come from the provider.
    assert len(tokenize(system)) + len(tokenize(prompt)) != prompt_tokens


def test_max_tokens_below_the_answer_stops_with_finish_reason_length(
    alice: httpx.Client,
) -> None:
    generation = create(alice, unique("long answer [fake tokens=80]"), max_tokens=25)

    final = wait_terminal(alice, generation["id"])

    assert final["status"] == "completed"
    assert final["finish_reason"] == "length"
    assert final["output"] == expected_text(25)
    assert final["usage"]["completion_tokens"] == 25
