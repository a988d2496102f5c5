"""Smoke runs of the latency benchmarks (bench.ttft_overhead, bench.resume,
bench.idle_connections) in quick mode, on this run's tier: they still run against the real
processes and measure what they claim. Only correctness is asserted, never a time."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import websockets

from bench import idle_connections, resume, ttft_overhead
from tests.fake_openai import expected_text
from tests.harness import FakeLLM, Service
from tests.tier_env import TIER


def _written(results_dir: Path, name: str) -> dict[str, Any]:
    markdown = (results_dir / f"{name}.md").read_text()
    assert markdown.startswith("## ")
    assert f"bench.{name}" in markdown  # the command that reproduces it
    data: dict[str, Any] = json.loads((results_dir / f"{name}.json").read_text())
    return data


def test_ttft_quick_run_times_every_run_from_post_to_the_first_stamped_token(
    tmp_path: Path,
) -> None:
    ttft_overhead.run(tmp_path, quick=True)

    data = _written(tmp_path, "ttft_overhead")
    [result] = data["tiers"]
    assert result["tier"] == TIER
    for span in ("post", "first", "provider_sent", "delivery", "direct"):
        assert result[span]["n"] == ttft_overhead.QUICK_RUNS
    # The burst: every user's generation reached its first stamped text.
    assert result["burst"]["users"] == result["burst"]["n"] == 5


def test_resume_snapshots_carry_the_whole_4000_token_text_on_sse_and_websocket(
    fake_llm: FakeLLM,
) -> None:
    service = Service(fake_llm, env={"PROVIDER_READ_TIMEOUT_S": "3600"}).start()
    try:
        resumer = resume.Resumer(service)
        running, completed, head = resumer.prepare()
        expected = expected_text(resume.TOKENS)
        headers = {"Authorization": f"Bearer {resumer.token}"}

        async def check() -> None:
            for generation_id in (running, completed):
                timing = await resume.sse_resume(
                    service.ports[0],
                    f"/api/v1/generations/{generation_id}/events",
                    headers,
                    until=lambda events: events[0]["type"] == "snapshot",
                )
                assert (timing.kind, timing.text) == ("snapshot", expected)
                async with websockets.connect(
                    f"ws://127.0.0.1:{service.ports[0]}/ws/v1", max_size=None
                ) as ws:
                    await ws.send(json.dumps({"type": "auth", "token": resumer.token}))
                    await ws.send(json.dumps({"type": "subscribe", "id": generation_id}))
                    snapshot = await resume.Resumer._ws_until_snapshot(ws, generation_id)
                assert snapshot["text"] == expected
            # Half-way through the running one, the buffer replays the rest as deltas.
            replay = await resume.sse_resume(
                service.ports[0],
                f"/api/v1/generations/{running}/events",
                {**headers, "Last-Event-ID": str(head // 2)},
                until=lambda events: events[-1]["seq"] >= head,
            )
            assert replay.kind == "delta" and replay.seq == head // 2 + 1
            assert expected.endswith(replay.text) and replay.text

        asyncio.run(check())
    finally:
        service.stop()


def test_resume_quick_run_writes_both_the_service_and_the_baseline(tmp_path: Path) -> None:
    resume.run(tmp_path, quick=True)

    data = _written(tmp_path, "resume")
    [result] = data["tiers"]
    assert result["running"]["ws_subscribe"]["snapshot"]["n"] == resume.QUICK_RUNS
    assert result["completed"]["sse"]["first_byte"]["n"] == resume.QUICK_RUNS
    assert data["baseline_streams_sse"]["first_byte"]["n"] == resume.QUICK_RUNS


def test_idle_connections_quick_run_holds_every_connection_open_and_answering(
    tmp_path: Path,
) -> None:
    idle_connections.run(tmp_path, quick=True)

    data = _written(tmp_path, "idle_connections")
    [result] = data["tiers"]
    assert result["errors"] == []
    assert result["opened"] == idle_connections.QUICK_CONNECTIONS
    assert result["alive_after_idle"] == idle_connections.QUICK_CONNECTIONS
    assert result["rss_after_kb"] > 0 and result["rss_before_kb"] > 0
