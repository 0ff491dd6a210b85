"""The SSE parser and the chat stream assembly: framing variants, fragments, and bad chunks."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from glmdeploy.sse import ChatStreamAssembly, SSEEvent, SSEParser, StreamFormatError


def parse_all(*chunks: bytes) -> list[SSEEvent]:
    parser = SSEParser()
    events: list[SSEEvent] = []
    for chunk in chunks:
        events += parser.feed(chunk)
    return events + parser.close()


def datas(events: list[SSEEvent]) -> list[str]:
    return [e.data for e in events]


def test_openai_style_stream() -> None:
    body = b'data: {"a": 1}\n\ndata: {"a": 2}\n\ndata: [DONE]\n\n'
    assert datas(parse_all(body)) == ['{"a": 1}', '{"a": 2}', "[DONE]"]


@pytest.mark.parametrize("newline", [b"\n", b"\r\n", b"\r"])
def test_any_line_ending(newline: bytes) -> None:
    body = b"data: one" + newline + newline + b"data: two" + newline + newline
    assert datas(parse_all(body)) == ["one", "two"]


def test_data_without_the_space_as_lightllm_native_sends_it() -> None:
    assert datas(parse_all(b'data:{"token": 1}\n\ndata:  two spaces\n\n')) == ['{"token": 1}', " two spaces"]


def test_comments_and_other_fields_are_not_data() -> None:
    events = parse_all(b": keep-alive\n\nevent: update\nid: 7\nretry: 300\ndata: x\n\n: bye\n")
    assert len(events) == 1
    assert (events[0].data, events[0].event, events[0].id, events[0].retry) == ("x", "update", "7", 300)


def test_multi_line_data_is_joined_with_newlines() -> None:
    assert datas(parse_all(b"data: first\ndata: second\ndata\n\n")) == ["first\nsecond\n"]


def test_blank_lines_without_data_dispatch_nothing() -> None:
    assert parse_all(b"\n\n\r\n\nevent: nothing\n\n") == []


def test_events_split_at_every_byte_including_between_cr_and_lf() -> None:
    body = 'data: {"text": "héllo"}\r\n\r\ndata: [DONE]\r\n\r\n'.encode()
    chunks = [body[i : i + 1] for i in range(len(body))]
    assert datas(parse_all(*chunks)) == ['{"text": "héllo"}', "[DONE]"]


def test_a_leading_bom_is_ignored() -> None:
    assert datas(parse_all(b"\xef\xbb\xbfdata: x\n\n")) == ["x"]


def test_arrival_time_is_when_the_completing_bytes_came() -> None:
    parser = SSEParser()
    assert parser.feed(b"data: a", at=1.0) == []
    assert parser.unterminated
    [event] = parser.feed(b"\n\n", at=2.5)
    assert event.arrived == 2.5
    assert not parser.unterminated


def test_a_last_event_without_its_blank_line_is_flushed_at_close() -> None:
    parser = SSEParser()
    assert datas(parser.feed(b"data: a\n\ndata: [DONE]")) == ["a"]
    assert parser.unterminated
    assert datas(parser.close()) == ["[DONE]"]


@given(st.lists(st.text(alphabet=st.characters(blacklist_characters="\r\n", blacklist_categories=["Cs"])), min_size=1,
                max_size=5),
       st.sampled_from(["\n", "\r\n", "\r"]), st.integers(min_value=1, max_value=7))
def test_any_split_gives_the_same_events(lines: list[str], newline: str, step: int) -> None:
    body = "".join(f"data: {line}{newline}{newline}" for line in lines).encode()
    whole = datas(parse_all(body))
    pieces = datas(parse_all(*[body[i : i + step] for i in range(0, len(body), step)]))
    assert whole == pieces == lines


# ------------------------------------------------------------------------------- chat assembly


def chunk(delta: dict[str, Any] | None = None, finish: str | None = None, **extra: Any) -> SSEEvent:
    body: dict[str, Any] = {"object": "chat.completion.chunk", "model": "m"}
    body["choices"] = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish}]
    body.update(extra)
    return SSEEvent(data=json.dumps(body))


def assemble(*events: SSEEvent) -> ChatStreamAssembly:
    assembly = ChatStreamAssembly()
    for event in events:
        assembly.add_event(event)
    return assembly


def test_content_and_reasoning_under_either_name() -> None:
    a = assemble(
        chunk({"role": "assistant", "content": ""}),
        chunk({"reasoning_content": "think "}),
        chunk({"reasoning": "more", "content": None}),
        chunk({"content": "Hi"}),
        chunk({}, finish="stop"),
        chunk(None, usage={"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}),
        SSEEvent(data="[DONE]"),
    )
    assert (a.role, a.reasoning, a.content, a.finish_reason, a.done) == ("assistant", "think more", "Hi", "stop", True)
    assert a.usage == {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}


def test_vllm_015_copies_reasoning_into_both_fields_once() -> None:
    a = assemble(chunk({"reasoning": "abc", "reasoning_content": "abc"}))
    assert a.reasoning == "abc"


def test_tool_call_fragments_reassemble_per_index() -> None:
    a = assemble(
        chunk({"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                               "function": {"name": "get_weather", "arguments": ""}}]}),
        chunk({"tool_calls": [{"index": 1, "id": "call_2", "type": "function",
                               "function": {"name": "get_time", "arguments": "{"}}]}),
        chunk({"tool_calls": [{"index": 0, "id": None, "function": {"name": None, "arguments": '{"city": '}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": '"Paris"}'}}]}),
        chunk({"tool_calls": [{"index": 1, "function": {"arguments": "}"}}]}),
        chunk({}, finish="tool_calls"),
    )
    calls = a.ordered_tool_calls()
    assert [(c.id, c.name, json.loads(c.arguments)) for c in calls] == [
        ("call_1", "get_weather", {"city": "Paris"}),
        ("call_2", "get_time", {}),
    ]
    assert calls[0].deltas == 3
    assert a.finish_reason == "tool_calls"


def test_one_delta_per_call_as_vllm_015_sends_it() -> None:
    a = assemble(chunk({"tool_calls": [{"index": 0, "id": "chatcmpl-tool-ab", "type": "function",
                                        "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}]}))
    [call] = a.ordered_tool_calls()
    assert (call.id, call.name, call.deltas) == ("chatcmpl-tool-ab", "get_weather", 1)
    assert call.arguments == '{"city": "Oslo"}'


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ("{not json", "is not JSON"),
        ("[1, 2]", "is not a JSON object"),
        ('{"choices": {"a": 1}}', "'choices' is not a list"),
        ('{"error": {"message": "boom"}}', "error in the stream"),
        ('{"choices": [{"index": 0, "delta": {"tool_calls": "x"}}]}', "'tool_calls' is not a list"),
    ],
)
def test_bad_chunks_raise_a_format_error(data: str, message: str) -> None:
    with pytest.raises(StreamFormatError, match=message):
        assemble(SSEEvent(data=data))


def test_events_after_done_are_counted_not_parsed() -> None:
    a = assemble(SSEEvent(data="[DONE]"), SSEEvent(data="{garbage"))
    assert a.done and a.after_done == 1 and a.chunks == 0


@pytest.mark.parametrize("value", ["\u00b2", "\u0663", "9" * 5000, "", "12a"])
def test_a_retry_that_is_not_a_plain_ascii_number_is_ignored(value: str) -> None:
    [event] = parse_all(f"retry: {value}\ndata: x\n\n".encode())
    assert (event.data, event.retry) == ("x", None)


def test_an_empty_read_between_cr_and_lf_changes_nothing() -> None:
    assert datas(parse_all(b"data: a\r", b"", b"\ndata: b\n\n")) == datas(parse_all(b"data: a\r\ndata: b\n\n"))


def test_json_nested_deeper_than_the_stack_is_a_format_error() -> None:
    with pytest.raises(StreamFormatError, match="is not JSON"):
        assemble(SSEEvent(data="[" * 100_000))
