"""An offline provider that streams a plausible answer at a realistic pace.

It is the default when no OPENAI_API_KEY is set, so that the service, the sample page and
the curl session of the README work on a machine with no network and no account.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import re
from collections.abc import AsyncGenerator

from jobs.providers.base import Chunk, ProviderRequest, chat_messages

# A model's pace: the first token after a short think, then ~40 tokens/s with jitter.
FIRST_TOKEN_DELAY_S = 0.35
TOKENS_PER_S = 40.0

_OPENINGS = [
    "Here is a short answer about {topic}.",
    "Good question. Let's look at {topic} step by step.",
    "Sure: a quick overview of {topic} follows.",
]
_SENTENCES = [
    "The key idea is to separate what must be correct from what merely needs to be fast.",
    "A useful first step is to write down the inputs, the outputs and the failure cases.",
    "In practice, most of the difficulty comes from the edges rather than the main path.",
    "Measure before you optimise: the slow part is rarely the one you expect.",
    "Keep the state in one place, and make every other copy derivable from it.",
    "When something can be retried, make sure that doing it twice is harmless.",
    "Small, well-named pieces are easier to test than one clever function.",
    "It helps to think about what the user sees when the network drops halfway.",
    "Write the simplest version first, then let real usage tell you what to improve.",
    "Good defaults matter more than options: most people never change them.",
]
_BULLETS = [
    "**Start small**: get one path working end to end.",
    "**Make it observable**: log what matters, count what fails.",
    "**Plan for failure**: timeouts, retries and idempotency keys.",
    "**Document the contract**: what callers may rely on, and what they may not.",
]
_CLOSINGS = [
    "I hope this helps; ask if you'd like an example.",
    "Let me know if you want me to go deeper on any of these points.",
]


def _topic(prompt: str) -> str:
    words = re.findall(r"[\w'-]+", prompt)
    topic = " ".join(words[:8]) if words else "your question"
    return topic if len(topic) < 80 else topic[:77] + "..."


def compose_answer(prompt: str) -> str:
    rng = random.Random(hashlib.sha256(prompt.encode()).digest())
    parts = [rng.choice(_OPENINGS).format(topic=_topic(prompt)), ""]
    parts.append(" ".join(rng.sample(_SENTENCES, 3)))
    parts.append("")
    parts.extend("- " + bullet for bullet in rng.sample(_BULLETS, 3))
    parts.append("")
    parts.append(" ".join(rng.sample(_SENTENCES, 2)) + " " + rng.choice(_CLOSINGS))
    return "\n".join(parts)


def tokenize(text: str) -> list[str]:
    """Word-sized pieces with their leading space, about as a BPE tokenizer would cut."""
    return re.findall(r"\s*\S{1,6}|\s+", text)


class DemoProvider:
    def _answer(self, request: ProviderRequest) -> tuple[list[str], str, dict[str, int]]:
        tokens = tokenize(compose_answer(request.prompt))
        finish_reason = "stop"
        if len(tokens) > request.max_tokens:
            tokens = tokens[: request.max_tokens]
            finish_reason = "length"
        # Everything sent counts: the system prompt, a conversation's history, the prompt.
        prompt_tokens = sum(len(tokenize(m["content"])) for m in chat_messages(request))
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": len(tokens),
            "total_tokens": prompt_tokens + len(tokens),
        }
        return tokens, finish_reason, usage

    async def astream(self, request: ProviderRequest) -> AsyncGenerator[Chunk, None]:
        tokens, finish_reason, usage = self._answer(request)
        jitter = random.Random(len(request.prompt))
        await asyncio.sleep(FIRST_TOKEN_DELAY_S)
        for index, token in enumerate(tokens):
            if index:
                await asyncio.sleep(jitter.uniform(0.5, 1.5) / TOKENS_PER_S)
            yield Chunk(text=token)
        yield Chunk(finish_reason=finish_reason, usage=usage)
