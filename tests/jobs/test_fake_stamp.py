"""The fake provider's `stamp=1` directive: tokens carry their send time (for bench/)."""

from __future__ import annotations

import time

import openai

from tests.fake_openai import STAMP, expected_text, token_text
from tests.harness import FakeLLM


def test_stamp_directive_appends_each_tokens_send_time_to_its_text(fake_llm: FakeLLM) -> None:
    client = openai.OpenAI(base_url=fake_llm.url + "/v1", api_key="test", max_retries=0)
    before = time.time()
    stream = client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "stamps [fake tokens=30 rate=200 stamp=1]"}],
        stream=True,
    )
    texts = [c.choices[0].delta.content for c in stream if c.choices and c.choices[0].delta.content]
    after = time.time()
    client.close()

    assert len(texts) == 30
    stamps = []
    for index, text in enumerate(texts):
        found = STAMP.findall(text)
        assert len(found) == 1, text
        stamps.append(float(found[0]))
        # Without its stamp the token is the usual one, newline (token 24) included.
        assert STAMP.sub("", text) == token_text(index)
    assert before <= stamps[0] and stamps[-1] <= after
    assert stamps == sorted(stamps)
    # Paced at 200 tokens/s: the stamps span the pacing, not one instant.
    assert stamps[-1] - stamps[0] >= 29 / 200 * 0.9


def test_tokens_carry_no_stamp_without_the_directive(fake_llm: FakeLLM) -> None:
    client = openai.OpenAI(base_url=fake_llm.url + "/v1", api_key="test", max_retries=0)
    stream = client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "plain [fake tokens=30]"}],
        stream=True,
    )
    text = "".join(
        c.choices[0].delta.content or "" for c in stream if c.choices and c.choices[0].delta
    )
    client.close()
    assert text == expected_text(30)
