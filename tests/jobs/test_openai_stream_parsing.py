"""The provider adapter reads the stream's events itself (the SDK only makes the request):
the parts of the SSE format and of the chunk objects it relies on."""

from __future__ import annotations

import pytest

from jobs.providers.base import Chunk, ProviderError
from jobs.providers.openai_compatible import _sse_data, chunk_from


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
    assert list(_sse_data(iter(lines))) == ['{"a":\n1}', "[DONE]"]


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
