"""llm_events_repaired_total (docs/metrics.md): live events a subscriber did not get, taken from
the replay buffer, are counted, and only those.

In this process, on the tier's event log and live path (tests/realtime/support.py), read back
through the same exporter /metrics uses.
"""

from __future__ import annotations

import pytest
from prometheus_client import REGISTRY, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from tests.realtime.support import Harness, in_thread, install_manual_clock, tier_sender

pytestmark = pytest.mark.django_db(transaction=True)


def repaired_total() -> float:
    text = generate_latest(REGISTRY).decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "llm_events_repaired_total":
                return float(sample.value)
    raise AssertionError("llm_events_repaired_total is not exported")


async def test_a_gap_filled_from_the_replay_buffer_counts_each_event_it_filled(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    harness = Harness(install_manual_clock(monkeypatch), await tier_sender(monkeypatch))
    try:
        worker = await harness.worker()
        lost = {3, 4, 5}
        sub = harness.subscriber(worker.generation_id, 0, drop_live=lambda e: e.seq in lost)
        await sub.join()
        await sub.start()
        before = await in_thread(repaired_total)()

        worker.deltas(2)
        await sub.deliver_live()
        worker.deltas(4)  # 3, 4, 5 lost; 6 arrives live and shows the gap
        await sub.deliver_live()

        assert sorted(sub.dropped_seqs) == sorted(lost)
        assert [event.seq for event in sub.received[1:]] == list(range(1, 7))
        assert sub.subscription.repaired == len(lost)
        assert await in_thread(repaired_total)() == before + len(lost)

        # Live delivery with no loss repairs nothing.
        worker.deltas(4)
        await sub.deliver_live()
        assert await in_thread(repaired_total)() == before + len(lost)
    finally:
        await harness.close()
