"""The coalescing policy (jobs.coalescing) on a simulated clock: when text goes out, and how
long any of it waits. The end-to-end counts are in test_runner_inproc.py and test_hot_path.py;
the latencies it buys are measured by bench.capacity (docs/scaling.md)."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

import pytest

from jobs.coalescing import (
    COALESCE_MAX_BYTES,
    TIMER_SLACK_S,
    Coalescer,
)


@dataclass
class Sent:
    at: float
    tokens: list[tuple[float, str]] = field(default_factory=list)  # (arrival, text)
    by_timer: bool = False


def simulate(arrivals: list[float], interval_s: float, size: int = 1) -> list[Sent]:
    """The engine's loop over one attempt: each arrival goes to `add`; between arrivals a timer
    fires at `due_at`, as the attempt's wait on the provider's queue does."""
    coalescer = Coalescer()
    sent: list[Sent] = []
    waiting: list[tuple[float, str]] = []

    def flush(now: float, *, by_timer: bool) -> None:
        text = coalescer.take()
        assert text == "".join(part for _, part in waiting)
        sent.append(Sent(at=now, tokens=list(waiting), by_timer=by_timer))
        waiting.clear()

    for index, at in enumerate([*arrivals, math.inf]):
        while coalescer and coalescer.due_at(interval_s) <= at:
            # The timer fires at its time (the slack lets a timer a little early count).
            now = coalescer.due_at(interval_s)
            assert coalescer.is_due(now, interval_s)
            flush(now, by_timer=True)
        if at == math.inf:
            break
        token = f"t{index}".ljust(size, ".")
        waiting.append((at, token))
        if coalescer.add(token, at, interval_s):
            flush(at, by_timer=False)
    assert not coalescer
    return sent


def test_the_first_text_goes_out_at_once() -> None:
    sent = simulate([1.0], interval_s=0.08)
    assert sent[0].at == 1.0 and not sent[0].by_timer


def test_a_steady_stream_sends_each_delta_as_its_newest_token_arrives() -> None:
    # 50 tokens/s for 3 s, on an 80 ms interval: after the first, four tokens a delta, each
    # sent when its fourth token arrives; no timer at all.
    arrivals = [10.0 + i * 0.02 for i in range(149)]
    sent = simulate(arrivals, interval_s=0.08)
    later = sent[1:]
    assert all(not s.by_timer for s in later)
    assert all(s.at == s.tokens[-1][0] for s in later)
    assert {len(s.tokens) for s in later[:-1]} == {4}
    assert len(sent) <= 2 + len(arrivals) / 4


def test_text_never_waits_past_the_interval_whatever_the_gaps() -> None:
    rng = random.Random(7)
    for interval_s in (0.04, 0.06, 0.08):
        at = 100.0
        arrivals = []
        for _ in range(2000):
            # Bursts, steady runs, pauses longer than the interval.
            at += rng.choice([0.0, 0.001, 0.02, 0.02, 0.021, 0.035, 0.05, 0.3])
            arrivals.append(at)
        sent = simulate(arrivals, interval_s=interval_s)
        assert [t for s in sent for t in s.tokens] == [(a, f"t{i}") for i, a in enumerate(arrivals)]
        waits = [s.at - arrived for s in sent for arrived, _ in s.tokens]
        assert max(waits) <= interval_s + 1e-9
        assert min(waits) >= 0
        # Most deltas still go out on an arrival, not on the timer.
        assert sum(s.by_timer for s in sent) < len(sent) / 2


def test_a_pause_sends_what_waits_once_its_oldest_text_has_waited_the_interval() -> None:
    # A token, then the provider thinks for a second.
    sent = simulate([1.0, 1.02, 2.0], interval_s=0.04)
    assert [len(s.tokens) for s in sent] == [1, 1, 1]
    assert sent[1].by_timer and sent[1].at == pytest.approx(1.02 + 0.04)
    assert not sent[2].by_timer and sent[2].at == 2.0


def test_a_token_a_little_late_still_joins_the_delta_before_it() -> None:
    # Gaps of 20 ms with some of 24 and 28 ms: what waits is not sent early by the timer
    # (the end of the stream aside, which the engine flushes at once).
    arrivals = [1.0]
    for index in range(60):
        arrivals.append(
            arrivals[-1] + (0.028 if index % 7 == 3 else 0.024 if index % 5 == 2 else 0.02)
        )
    sent = simulate(arrivals, interval_s=0.08)
    assert all(not s.by_timer for s in sent[:-1])
    assert all(s.at == s.tokens[-1][0] for s in sent[:-1])


def test_a_slow_stream_sends_every_token_as_it_comes() -> None:
    # 10 tokens/s on a 40 ms interval: nothing ever waits for a next token.
    arrivals = [1.0 + i * 0.1 for i in range(20)]
    sent = simulate(arrivals, interval_s=0.04)
    assert [len(s.tokens) for s in sent] == [1] * 20
    assert all(s.at == s.tokens[0][0] for s in sent)


def test_what_waits_goes_out_at_once_when_it_reaches_the_size_cap() -> None:
    size = 100
    arrivals = [1.0 + i * 0.001 for i in range(40)]
    sent = simulate(arrivals, interval_s=0.08, size=size)
    # The first alone, then a delta as soon as COALESCE_MAX_BYTES are waiting.
    per_delta = math.ceil(COALESCE_MAX_BYTES / size)
    assert [len(s.tokens) for s in sent[1:-1]] == [per_delta] * (len(sent) - 2)
    assert all(not s.by_timer for s in sent[:-1])


def test_a_timer_that_fires_a_little_early_counts_as_on_time() -> None:
    coalescer = Coalescer()
    assert coalescer.add("a", 1.0, 0.04)
    coalescer.take()
    assert not coalescer.add("b", 1.01, 0.04)
    due = coalescer.due_at(0.04)
    assert due == pytest.approx(1.05)
    assert coalescer.is_due(due - TIMER_SLACK_S / 2, 0.04)
    assert not coalescer.is_due(due - 2 * TIMER_SLACK_S, 0.04)
    assert Coalescer().due_at(0.04) == math.inf
