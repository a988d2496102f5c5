"""The sample page and its client in a real browser: Debian's headless Chromium, driven by
playwright-core from the Node scripts beside this file (no browser download).

Each test starts one scenario script against a service on this run's tier, then checks what
the page showed at the end against ``GET /api/v1/generations/{id}``: the guarantee of
docs/protocol.md §3, seen by a person. Each scenario leaves a screenshot in docs/screenshots/.

Outside CI the tests skip when /usr/bin/chromium is missing (``./dev test`` installs it); in
CI (CI=true) they never skip.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.browser.conftest import PASSWORD
from tests.browser.fake_llm import CANNED
from tests.conftest import wait_terminal
from tests.fake_openai import answer_after_reasoning, expected_text, reasoning_text
from tests.harness import ROOT, Service
from tests.tier_env import JWT_SECRET, RUN_DIR, TIER, free_port
from tests.wire import decoded_frame

HERE = Path(__file__).resolve().parent
CHROMIUM = "/usr/bin/chromium"
SCREENSHOTS = ROOT / "docs" / "screenshots"
# A scenario script stops itself after 90 s (lib.mjs); this only catches a stuck Node.
SCENARIO_TIMEOUT_S = 120

IN_CI = os.environ.get("CI", "").lower() == "true"
pytestmark = pytest.mark.skipif(
    not IN_CI and not Path(CHROMIUM).exists(),
    reason=f"{CHROMIUM} is missing (./dev test installs it: apt-get install chromium)",
)


def run_scenario(
    site: Service, script: str, username: str, prompt: str, **extra: str
) -> dict[str, Any]:
    """Run tests/browser/<script>.mjs; returns the JSON it wrote. Fails with its output."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    result_file = Path(RUN_DIR) / f"browser-{script}-{extra.get('SSE_MODE', '')}-{TIER}.json"
    result_file.unlink(missing_ok=True)
    frames_file = result_file.with_suffix(".frames.json")
    frames_file.unlink(missing_ok=True)
    shot = extra.pop("SHOT", script)
    env = {
        **os.environ,
        "BASE_URL": site.url(),
        "USERNAME": username,
        "PASSWORD": PASSWORD,
        "PROMPT": prompt,
        "SCREENSHOT": str(SCREENSHOTS / f"{shot}.png"),
        "RESULT_FILE": str(result_file),
        "FRAMES_FILE": str(frames_file),
        "CHROMIUM": CHROMIUM,
        **extra,
    }
    node = shutil.which("node")
    assert node, "node is needed for the browser tests"
    completed = subprocess.run(
        [node, str(HERE / f"{script}.mjs")],
        cwd=HERE,
        env=env,
        capture_output=True,
        text=True,
        timeout=SCENARIO_TIMEOUT_S,
    )
    output = f"{completed.stdout}\n{completed.stderr}"
    print(output)  # shown by pytest on failure, and with -s
    assert completed.returncode == 0, f"{script}.mjs failed:\n{output}\n{site.logs()}"
    # Each WebSocket frame the page received matches its model (realtime/schemas.py).
    for frame in json.loads(frames_file.read_text()):
        decoded_frame(frame)
    result: dict[str, Any] = json.loads(result_file.read_text())
    return result


def final(site: Service, username: str, generation_id: str) -> dict[str, Any]:
    with site.client(username) as client:
        return wait_terminal(client, generation_id)


def words(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def test_answer_streams_as_markdown_and_reopens_from_history(
    site: Service, node_modules: Path
) -> None:
    result = run_scenario(site, "stream", "ada", "[canned markdown] [fake rate=40] Resilient UI?")

    generation = final(site, "ada", result["id"])
    assert generation["status"] == "completed"
    assert result["text"] == generation["output"] == CANNED["markdown"]


def test_reload_mid_stream_continues_without_loss_or_repeat(
    site: Service, node_modules: Path
) -> None:
    result = run_scenario(site, "reload", "ben", "Reload me [fake tokens=400 rate=70]")

    generation = final(site, "ben", result["id"])
    assert result["resumed_after"] > 0
    assert 0 < len(result["before_reload"]) < len(generation["output"])
    assert result["text"] == generation["output"] == expected_text(400)
    assert words(result["rendered"]) == words(generation["output"])


def test_server_closes_1001_and_4008_are_survived(site: Service, node_modules: Path) -> None:
    result = run_scenario(site, "server_close", "hal", "Hold on [fake tokens=700 rate=80]")

    generation = final(site, "hal", result["id"])
    assert [resume["code"] for resume in result["resumes"]] == [1001, 4008]
    assert result["text"] == generation["output"] == expected_text(700)
    assert words(result["rendered"]) == words(generation["output"])


@pytest.mark.parametrize("sse_mode", ["fetch", "eventsource"])
def test_blocked_websocket_falls_back_to_sse(
    site: Service, node_modules: Path, sse_mode: str
) -> None:
    # Nothing listens on this port: the page's WebSocket is refused (see sse_fallback.mjs).
    closed_port = str(free_port())
    result = run_scenario(
        site,
        "sse_fallback",
        "cleo",
        f"No WebSocket here ({sse_mode}) [fake tokens=150 rate=60]",
        CLOSED_PORT=closed_port,
        SSE_MODE=sse_mode,
        SHOT=f"sse_fallback_{sse_mode}",
    )

    generation = final(site, "cleo", result["id"])
    assert result["text"] == generation["output"] == expected_text(150)
    assert words(result["rendered"]) == words(generation["output"])


def test_stop_button_cancels_and_keeps_the_partial_answer(
    site: Service, node_modules: Path
) -> None:
    result = run_scenario(site, "cancel", "dev", "A long one [fake tokens=3000 rate=60]")

    generation = final(site, "dev", result["id"])
    assert generation["status"] == "cancelled"
    assert result["text"] == generation["output"]
    assert 0 < len(generation["output"]) < len(expected_text(3000))
    assert expected_text(3000).startswith(generation["output"])


def test_offline_then_online_resumes_mid_stream(site: Service, node_modules: Path) -> None:
    result = run_scenario(site, "offline", "eve", "Flaky network [fake tokens=400 rate=70]")

    generation = final(site, "eve", result["id"])
    assert result["resumed_after"] > 0
    assert result["text"] == generation["output"] == expected_text(400)
    assert words(result["rendered"]) == words(generation["output"])


def test_token_refreshed_on_the_open_socket_during_a_long_stream(
    site: Service, node_modules: Path
) -> None:
    result = run_scenario(
        site,
        "token_refresh",
        "fay",
        "A long answer [fake tokens=400 rate=40]",
        JWT_SECRET=JWT_SECRET,
        TOKEN_TTL_S="4",
    )

    generation = final(site, "fay", result["id"])
    assert result["tokens_issued"] >= 3
    assert result["text"] == generation["output"] == expected_text(400)
    assert words(result["rendered"]) == words(generation["output"])


def test_untrusted_output_renders_inert(site: Service, node_modules: Path) -> None:
    result = run_scenario(
        site,
        "untrusted_output",
        "gus",
        "[canned xss] [fake rate=150] and my own <img src=x onerror=alert('prompt')>",
    )

    generation = final(site, "gus", result["id"])
    assert result["text"] == generation["output"] == CANNED["xss"]


def test_reasoning_model_shows_its_thinking_apart_from_the_answer(
    site: Service, node_modules: Path
) -> None:
    result = run_scenario(
        site, "reasoning", "ida", "Think first [fake tokens=80 reasoning=40 rate=40 server=vllm]"
    )

    generation = final(site, "ida", result["id"])
    assert generation["status"] == "completed"
    assert result["reasoning"] == generation["reasoning"] == reasoning_text(40)
    assert result["text"] == generation["output"] == answer_after_reasoning(80, 40)
    # The thinking streamed before the answer, and as text: no element inside it.
    assert result["early"]["thinking"] and not result["early"]["answer"]
    assert result["elements"] == 0


# -- conversations (docs/protocol.md "Conversations") ----------------------------------------

# The conversation scenarios run several answers in turn; lib.mjs's default is 90 s.
LONG_SCENARIO_TIMEOUT_MS = (SCENARIO_TIMEOUT_S - 10) * 1000


def provider_requests(site: Service) -> list[dict[str, Any]]:
    """What the fake provider received (its request log)."""
    base = site.env["OPENAI_BASE_URL"].removesuffix("/v1")
    requests: list[dict[str, Any]] = httpx.get(base + "/_requests", timeout=10).json()
    return requests


def test_a_follow_up_carries_the_earlier_turn_and_branches_flip(
    site: Service, node_modules: Path
) -> None:
    marker = uuid.uuid4().hex[:8]
    first_prompt = f"Name three rivers {marker} [fake tokens=12 rate=60]"
    follow_up = f"Which is longest? {marker}"
    edited = f"Name three lakes {marker}"

    result = run_scenario(
        site,
        "conversation",
        "ivy",
        first_prompt,
        FOLLOW_UP=follow_up,
        EDITED=edited,
        # Five answers one after another: more room than one answer's scenario on a busy CI
        # machine (still inside SCENARIO_TIMEOUT_S).
        SCENARIO_TIMEOUT_MS=str(LONG_SCENARIO_TIMEOUT_MS),
    )

    first = final(site, "ivy", result["first"])
    answer = final(site, "ivy", result["follow_up"])
    sent = [
        r["messages"] for r in provider_requests(site) if r["messages"][-1]["content"] == follow_up
    ]
    expected = [
        {"role": "user", "content": first_prompt},
        {"role": "assistant", "content": first["output"]},
        {"role": "user", "content": follow_up},
    ]
    # The follow-up and its regeneration: both with the first turn before them.
    assert sent == [expected, expected]
    assert result["follow_up_text"] == answer["output"]
    assert [r["messages"] for r in provider_requests(site) if edited in str(r["messages"])] == [
        [{"role": "user", "content": edited}]
    ]
    with site.client("ivy") as client:
        view = client.get(f"/api/v1/conversations/{result['conversation_id']}").json()
    assert view["current_path"] == [result["edited"]]
    assert {(b["turn_id"], b["turns"]) for b in view["branches"]} == {
        (result["follow_up"], 2),
        (result["regenerated"], 2),
        (result["edited"], 1),
    }


def test_a_second_browser_joins_the_conversation_mid_answer(
    site: Service, node_modules: Path
) -> None:
    marker = uuid.uuid4().hex[:8]
    result = run_scenario(
        site,
        "second_browser",
        "jon",
        f"Tell me a long story {marker} [fake tokens=400 rate=50]",
        FOLLOW_UP=f"And then? {marker}",
        SCENARIO_TIMEOUT_MS=str(LONG_SCENARIO_TIMEOUT_MS),
    )

    generation = final(site, "jon", result["id"])
    follow_up = final(site, "jon", result["follow_up"])
    assert 0 < len(result["joined_at"]) < len(generation["output"])
    assert result["text_first"] == result["text_second"] == generation["output"]
    assert result["follow_up_second"] == follow_up["output"]
    assert follow_up["parent_id"] == result["id"]
