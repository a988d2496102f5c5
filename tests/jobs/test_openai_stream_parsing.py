"""The provider adapter reads the stream's events itself (the SDK only makes the request):
the parts of the SSE format and of the chunk objects it relies on."""

from __future__ import annotations

from collections.abc import Iterable

import pytest

from jobs.providers.base import Chunk, ProviderError
from jobs.providers.openai_compatible import (
    ChunkReader,
    SseDataCollector,
    SseLineSplitter,
    chunk_from,
)


def read_events(events: Iterable[str], wants_usage: bool) -> list[Chunk]:
    """The chunks a ChunkReader makes of these events' data, each event in a read of its own,
    up to where it says the read is done."""
    reader = ChunkReader(wants_usage)
    chunks: list[Chunk] = []
    for data in events:
        chunks += reader.feed(f"data: {data}\n\n".encode())
        if reader.done:
            break
    if reader.error is not None:
        raise reader.error
    return chunks


def sse_lines(parts: Iterable[bytes]) -> list[str]:
    splitter = SseLineSplitter()
    lines = [line for part in parts for line in splitter.feed(part)]
    return lines + splitter.end()


def test_sse_data_joins_data_lines_and_skips_comments_and_other_fields() -> None:
    lines = [
        ": keep-alive",
        "",
        "event: x",
        "id: 3",
        'data: {"a":',
        "data:1}",
        "",
        "data: [DONE]",
        "",
    ]
    collector = SseDataCollector()
    data = [collector.line(line) for line in lines]
    assert [d for d in data if d is not None] == ['{"a":\n1}', "[DONE]"]
    # The same, from the body's bytes however the reads cut them.
    body = "\n".join([*lines, ""]).encode()
    for cut in range(len(body)):
        collector = SseDataCollector()
        data = [collector.line(line) for line in sse_lines([body[:cut], body[cut:]])]
        assert [d for d in data if d is not None] == ['{"a":\n1}', "[DONE]"]


def testchunk_from_reads_text_finish_reason_and_usage() -> None:
    text = chunk_from('{"choices": [{"index": 0, "delta": {"content": "hé"}}]}')
    end = chunk_from('{"choices": [{"index": 0, "delta": {}, "finish_reason": "length"}]}')
    usage = chunk_from(
        '{"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}}'
    )
    assert text == Chunk(text="hé")
    assert end == Chunk(finish_reason="length")
    assert usage == Chunk(usage={"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7})


def test_an_error_inside_the_stream_is_a_transient_provider_error() -> None:
    with pytest.raises(ProviderError) as raised:
        chunk_from('{"error": {"message": "overloaded", "type": "server_error"}}')
    assert raised.value.permanent is False
    assert str(raised.value) == "overloaded"


def test_lines_split_on_cr_lf_and_crlf_only_and_keep_split_characters_whole() -> None:
    body = 'data: {"a":"x\u2028y\u2029z\u0085é"}\r\n\r\ndata: 2\rdata: 3\n\n'.encode()
    # Every byte in its own read: a CRLF and each multi-byte character cut in two.
    parts = [body[i : i + 1] for i in range(len(body))]

    lines = list(sse_lines(iter(parts)))

    assert lines == ['data: {"a":"x\u2028y\u2029z\u0085é"}', "", "data: 2", "data: 3", ""]


def test_done_without_finish_reason_ends_as_stop_and_usage_ends_the_read() -> None:
    content = '{"choices": [{"index": 0, "delta": {"content": "hi"}}]}'
    assert list(read_events(iter([content, "[DONE]"]), wants_usage=True)) == [
        Chunk(text="hi"),
        Chunk(finish_reason="stop"),
    ]
    finish = '{"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}'
    usage = '{"choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 1}}'
    never = iter([content, finish, usage])  # no [DONE]: the read must not wait for one
    chunks = list(read_events(never, wants_usage=True))
    assert chunks[-1].usage == {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 0}


def test_unreadable_shapes_are_permanent_protocol_errors() -> None:
    for data in ('{"choices": [null]}', "not json", '{"choices": [{"delta": "x"}]}'):
        with pytest.raises(ProviderError) as raised:
            chunk_from(data)
        assert raised.value.code == "provider_protocol"
        assert raised.value.permanent is True


def _delta(content: str, field: str = "content", finish: str | None = None) -> str:
    """A chunk whose `field` is `content` as a server escapes it: "\\ud83d" stays six
    characters of JSON, as a server that streams byte-level tokens sends half an emoji."""
    reason = f', "finish_reason": "{finish}"' if finish else ""
    return f'{{"choices": [{{"index": 0, "delta": {{"{field}": "{content}"}}{reason}}}]}}'


def test_an_emoji_split_across_two_chunks_arrives_whole() -> None:
    # U+1F600 is the pair D83D DE00; JSON can only escape it as the two halves.
    events = [_delta("hi \\ud83d"), _delta("\\ude00 there"), "[DONE]"]
    chunks = read_events(events, wants_usage=False)
    assert "".join(c.text for c in chunks) == "hi \U0001f600 there"
    for chunk in chunks:
        chunk.text.encode("utf-8")  # every piece is sendable as it comes
    reasoning = [_delta("\\ud83d", "reasoning_content"), _delta("\\ude00", "reasoning_content")]
    chunks = read_events([*reasoning, "[DONE]"], wants_usage=False)
    assert "".join(c.reasoning for c in chunks) == "\U0001f600"


def test_a_surrogate_without_its_partner_becomes_the_replacement_character() -> None:
    events = [_delta("a\\ude00b"), _delta("c\\ud83d"), _delta("d"), _delta("\\ud83d"), "[DONE]"]
    chunks = read_events(events, wants_usage=False)
    assert "".join(c.text for c in chunks) == "a\ufffdbc\ufffdd\ufffd"
    # A half held back when the answer ends with a finish reason goes out with it.
    events = [_delta("e\\ud83d"), _delta("", finish="stop")]
    chunks = read_events(events, wants_usage=False)
    assert [(c.text, c.finish_reason) for c in chunks] == [("e", None), ("\ufffd", "stop")]


def test_the_chunks_are_the_same_however_the_network_reads_cut_the_body() -> None:
    events = [_delta("hé"), _delta("\\ud83d"), _delta("\\ude00 x"), _delta("", finish="length")]
    body = "".join(f"data: {data}\r\n\r\n" for data in [*events, "[DONE]"]).encode()
    whole = ChunkReader(wants_usage=False).feed(body)
    assert [(c.text, c.finish_reason) for c in whole] == [
        ("hé", None),
        ("\U0001f600 x", None),
        ("", "length"),
    ]
    for cut in range(1, len(body)):
        reader = ChunkReader(wants_usage=False)
        chunks = reader.feed(body[:cut]) + reader.feed(body[cut:])
        assert chunks == whole, cut
        assert reader.done and reader.finished


def test_a_body_that_ends_before_the_answer_did_is_not_finished() -> None:
    reader = ChunkReader(wants_usage=False)
    assert reader.feed(f"data: {_delta('hi')}\n\ndata: {_delta('unended')}".encode()) == [
        Chunk(text="hi")
    ]
    assert reader.feed(b"") == []  # the body's end: the unended event is dropped
    assert not reader.finished and not reader.done


def test_the_text_before_an_error_in_the_same_read_is_kept() -> None:
    error = '{"error": {"message": "overloaded", "type": "server_error"}}'
    reader = ChunkReader(wants_usage=False)
    chunks = reader.feed(
        f"data: {_delta('a')}\n\ndata: {error}\n\ndata: {_delta('b')}\n\n".encode()
    )
    assert chunks == [Chunk(text="a")]
    assert reader.done and not reader.finished
    assert reader.error is not None and str(reader.error) == "overloaded"
