"""What the provider is sent for a turn of a conversation: its history, built on the server
from the turn's ancestors, within the model's context budget; and the token estimates that
budget is counted in (docs/protocol.md, conversations)."""

from __future__ import annotations

from django.conf import settings

from core.errors import ApiError
from core.models import Generation
from jobs.providers.demo import tokenize

# Every chat message costs a few tokens of framing (role, separators) besides its text.
MESSAGE_OVERHEAD_TOKENS = 4


def count_tokens(text: str) -> int:
    """An estimate of the provider's count (about one per word), the same the usage uses when
    the provider reports none."""
    return len(tokenize(text))


def context_budget_tokens(model: str) -> int:
    budget: int = settings.CONTEXT_BUDGETS.get(model, settings.CONTEXT_BUDGET_TOKENS)
    return budget


def _message_tokens(text: str) -> int:
    return count_tokens(text) + MESSAGE_OVERHEAD_TOKENS


def _fixed_cost_tokens(system: str | None, prompt: str) -> int:
    return _message_tokens(prompt) + (_message_tokens(system) if system else 0)


def check_prompt_fits(*, model: str, system: str | None, prompt: str) -> None:
    """The system prompt and the new prompt are never left out: if they alone pass the
    model's context budget, the turn cannot be sent at all."""
    budget = context_budget_tokens(model)
    cost = _fixed_cost_tokens(system, prompt)
    if cost > budget:
        raise ApiError(
            "prompt_too_long",
            f"The prompt and system prompt are about {cost} tokens; the context budget of "
            f"{model} is {budget}.",
            details={"prompt": f"At most about {budget} tokens with the system prompt."},
        )


def history_for(generation_id: str) -> tuple[tuple[str, str], ...]:
    """The (role, content) messages between the system prompt and the new prompt of a turn:
    each ancestor's prompt and stored output, oldest first, as many of the newest as fit.

    An ancestor that failed or was cancelled contributes what its user saw, its stored output
    (an empty output adds no assistant message). The budget is the model's, less the system
    prompt and the new prompt, which are always sent; MAX_HISTORY_CHARS bounds the text too.
    """
    turn = (
        Generation.objects.filter(pk=generation_id)
        .values("conversation_id", "parent_id", "model", "system", "prompt")
        .first()
    )
    if turn is None or turn["conversation_id"] is None or turn["parent_id"] is None:
        return ()
    rows = Generation.objects.filter(conversation_id=turn["conversation_id"]).values_list(
        "id", "parent_id", "prompt", "output"
    )[: settings.MAX_CONVERSATION_TURNS]
    by_id = {row[0]: row for row in rows}
    ancestors: list[tuple[str, str]] = []  # (prompt, output), newest first
    turn_id: str | None = turn["parent_id"]
    seen: set[str] = set()
    while turn_id is not None and turn_id in by_id and turn_id not in seen:
        seen.add(turn_id)
        _, parent_id, prompt, output = by_id[turn_id]
        ancestors.append((prompt, output))
        turn_id = parent_id
    budget_tokens = context_budget_tokens(turn["model"]) - _fixed_cost_tokens(
        turn["system"], turn["prompt"]
    )
    budget_chars = settings.MAX_HISTORY_CHARS
    kept: list[tuple[str, str]] = []
    for prompt, output in ancestors:
        cost_tokens = _message_tokens(prompt) + (_message_tokens(output) if output else 0)
        cost_chars = len(prompt) + len(output)
        if cost_tokens > budget_tokens or cost_chars > budget_chars:
            # The oldest turns go first: everything from here back is left out, so the
            # history stays a contiguous run of the most recent turns.
            break
        budget_tokens -= cost_tokens
        budget_chars -= cost_chars
        kept.append((prompt, output))
    messages: list[tuple[str, str]] = []
    for prompt, output in reversed(kept):
        messages.append(("user", prompt))
        if output:
            messages.append(("assistant", output))
    return tuple(messages)
