"""Property tests for the SSE parser and the chat stream assembly (glmdeploy.sse).

The parser must give the same events however the bytes are split into reads, agree with a plain
reference reading of the WHATWG event-stream rules, and never raise on any bytes. The assembly
takes any event: a chunk it can use, or a ``StreamFormatError`` (a ValueError the smoke checks
report), never another exception.
"""

from __future__ import annotations

import json
import re

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from glmdeploy.sse import ChatStreamAssembly, SSEEvent, SSEParser, StreamFormatError

FIELDS = ["data", "data", "data", "event", "id", "retry", "", "comment", "other", "data"]
values = st.one_of(
    st.text(alphabet=st.characters(blacklist_characters="\r\n", blacklist_categories=("Cs",)), max_size=12),
    st.sampled_from(["", " ", "  x", "[DONE]", '{"a": 1}', "12", "٣", "²", "9" * 19, "9" * 5000, "a\x00b", "\ufeff"]),
)
endings = st.sampled_from(["\n", "\r", "\r\n"])


@st.composite
def streams(draw: st.DrawFn) -> str:
    parts = ["\ufeff"] if draw(st.booleans()) else []
    for _ in range(draw(st.integers(min_value=0, max_value=14))):
        name = draw(st.sampled_from(FIELDS))
        value = draw(values)
        if name == "":
            line = ""
        elif name == "comment":
            line = ":" + value
        else:
            line = name + draw(st.sampled_from([":", ": ", ""])) + value
        parts.append(line + draw(endings))
    if draw(st.booleans()):
        parts.append(draw(values))  # an unterminated last line
    return "".join(parts)


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    # Repeated cut points give empty reads on purpose: feed(b"") is a legal call.
    points = sorted(min(c, len(data)) for c in cuts)
    pieces, start = [], 0
    for point in points:
        pieces.append(data[start:point])
        start = point
    pieces.append(data[start:])
    return pieces


def _parse(chunks: list[bytes]) -> list[tuple[str, str, str | None, int | None]]:
    parser = SSEParser(clock=lambda: 0.0)
    events: list[SSEEvent] = []
    for chunk in chunks:
        events += parser.feed(chunk)
    events += parser.close()
    return [(e.data, e.event, e.id, e.retry) for e in events]


def _reference(text: str) -> list[tuple[str, str, str | None, int | None]]:
    """The WHATWG rules, read plainly, plus the parser's own choices: a last event is kept at close(),
    and a retry longer than 18 digits is ignored."""
    text = text.removeprefix("\ufeff")
    lines = re.split(r"\r\n|\r|\n", text)
    events = []
    data: list[str] = []
    event, last_id, retry = "", None, None
    for line in lines:
        if line == "":
            if data:
                events.append(("\n".join(data), event or "message", last_id, retry))
            data, event = [], ""
            continue
        if line.startswith(":"):
            continue
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if name == "data":
            data.append(value)
        elif name == "event":
            event = value
        elif name == "id" and "\0" not in value:
            last_id = value
        elif name == "retry" and 0 < len(value) <= 18 and all(c in "0123456789" for c in value):
            retry = int(value)
    if data:
        events.append(("\n".join(data), event or "message", last_id, retry))
    return events


@settings(deadline=None)
@given(text=streams(), cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=8))
@example(text="data: a\r\ndata: b\n\n", cuts=[8, 8])  # a CR ending one read, then an empty read, then its LF
@example(text="retry: ²\ndata: x\n\n", cuts=[])  # str.isdigit() is true for '²', int() refuses it
@example(text="retry: " + "9" * 5000 + "\ndata: x\n\n", cuts=[])  # past Python's 4,300-digit int limit
def test_events_do_not_depend_on_how_the_bytes_are_split(text: str, cuts: list[int]) -> None:
    data = text.encode()
    whole = _parse([data])
    assert _parse(_split(data, cuts)) == whole
    assert whole == _reference(text)


@settings(deadline=None)
@given(st.lists(st.binary(max_size=40), max_size=10))
def test_any_bytes_in_any_reads_never_raise(chunks: list[bytes]) -> None:
    parser = SSEParser(clock=lambda: 0.0)
    for chunk in chunks:
        parser.feed(chunk)
    parser.close()
    assert parser.bytes_seen == sum(map(len, chunks))


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)
deltas = st.fixed_dictionaries(
    {},
    optional={
        "role": json_values,
        "content": json_values,
        "reasoning_content": json_values,
        "reasoning": json_values,
        "tool_calls": st.lists(
            st.fixed_dictionaries(
                {},
                optional={
                    "index": json_values,
                    "id": json_values,
                    "type": json_values,
                    "function": st.fixed_dictionaries({}, optional={"name": json_values, "arguments": json_values})
                    | json_values,
                },
            )
            | json_values,
            max_size=3,
        )
        | json_values,
    },
)
chunks = st.fixed_dictionaries(
    {},
    optional={
        "choices": st.lists(
            st.fixed_dictionaries(
                {}, optional={"index": json_values, "delta": deltas | json_values, "finish_reason": json_values}
            )
            | json_values,
            max_size=2,
        )
        | json_values,
        "usage": json_values,
        "model": json_values,
        "error": json_values,
    },
)
event_data = st.one_of(
    chunks.map(json.dumps),
    json_values.map(json.dumps),
    st.text(max_size=30),
    st.sampled_from(["[DONE]", " [DONE] ", "", "[" * 100_000, '{"choices": [' * 3, "1" * 5000]),
)


@settings(deadline=None)
@given(st.lists(event_data, max_size=6))
@example(["[" * 100_000])  # nested deeper than the stack: json raises RecursionError, not ValueError
def test_assembly_takes_any_event_or_raises_stream_format_error(datas: list[str]) -> None:
    assembly = ChatStreamAssembly()
    for data in datas:
        try:
            assembly.add_event(SSEEvent(data=data))
        except StreamFormatError as exc:
            assert "\n" not in str(exc)
    assembly.ordered_tool_calls()


@settings(deadline=None)
@given(
    pieces=st.lists(st.text(max_size=6), max_size=8),
    args=st.lists(st.tuples(st.integers(min_value=0, max_value=2), st.text(max_size=6)), max_size=10),
)
def test_fragments_add_up_whatever_their_split(pieces: list[str], args: list[tuple[int, str]]) -> None:
    assembly = ChatStreamAssembly()
    for piece in pieces:
        assembly.add_chunk({"choices": [{"index": 0, "delta": {"content": piece}}]})
    for index, fragment in args:
        call = {"index": index, "function": {"arguments": fragment}}
        assembly.add_chunk({"choices": [{"index": 0, "delta": {"tool_calls": [call]}}]})
    assert assembly.content == "".join(pieces)
    expected: dict[int, str] = {}
    for index, fragment in args:
        expected[index] = expected.get(index, "") + fragment
    assert {d.index: d.arguments for d in assembly.ordered_tool_calls()} == expected


# Regressions found by the properties above, fixed in sse.py (commit 531c96b).


def test_a_retry_field_with_non_ascii_digits_is_ignored() -> None:
    assert _parse(["retry: ²\ndata: x\n\nretry: ٣\ndata: y\n\n".encode()]) == [
        ("x", "message", None, None),
        ("y", "message", None, None),
    ]


def test_a_retry_field_with_thousands_of_digits_is_ignored() -> None:
    assert _parse([b"retry: " + b"9" * 5000 + b"\ndata: x\n\n"]) == [("x", "message", None, None)]


def test_a_chunk_nested_deeper_than_the_stack_is_a_stream_format_error() -> None:
    with pytest.raises(StreamFormatError):
        ChatStreamAssembly().add_event(SSEEvent(data="[" * 100_000))


def test_an_empty_read_between_cr_and_lf_changes_nothing() -> None:
    assert _parse([b"data: a\r", b"", b"\ndata: b\n\n"]) == _parse([b"data: a\r\ndata: b\n\n"])
