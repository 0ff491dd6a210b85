"""``glmdeploy.chat``: what a streamed answer shows, the conversation and its history document, slash commands."""

from __future__ import annotations

import json
from typing import Any

import pytest

from glmdeploy.chat import (
    DECLINED_RESULT,
    Command,
    Conversation,
    StreamView,
    TokenTally,
    check_tools,
    history_name,
    parse_command,
    request_body,
    tool_call_block,
)
from glmdeploy.sse import SSEParser, ToolCallDraft


def _chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
    body = {"object": "chat.completion.chunk", "model": "glm",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
    return b"data: " + json.dumps(body).encode() + b"\n\n"


USAGE = b'data: {"choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 4, "total_tokens": 13}}\n\n'
DONE = b"data: [DONE]\n\n"


def _show(raw: bytes, split: int = 7) -> tuple[list[tuple[str, str]], StreamView]:
    """Feed ``raw`` in ``split``-byte reads (events cut mid-line); the pieces shown, as (kind, text)."""
    parser, view = SSEParser(), StreamView()
    shown: list[tuple[str, str]] = []
    for start in range(0, len(raw), split):
        for event in parser.feed(raw[start:start + split]):
            shown += [(p.kind, p.text if p.call is None else p.call.name) for p in view.add(event)]
    for event in parser.close():
        shown += [(p.kind, p.text) for p in view.add(event)]
    shown += [(p.kind, p.call.name if p.call else "") for p in view.finish()]
    return shown, view


@pytest.mark.parametrize("field", ["reasoning_content", "reasoning"])  # SGLang's name, vLLM's and LightLLM's
def test_reasoning_then_answer_in_arrival_order_under_either_field_name(field: str) -> None:
    raw = (_chunk({"role": "assistant", "content": ""}) + _chunk({field: "Let me "}) + _chunk({field: "think."})
           + _chunk({"content": "\n\nHello"}) + _chunk({"content": " there."}) + _chunk({}, "stop") + USAGE + DONE)
    shown, view = _show(raw)
    assert shown == [("reasoning", "Let me "), ("reasoning", "think."), ("content", "\n\nHello"),
                     ("content", " there.")]
    answer = view.answer()
    assert (answer.reasoning, answer.content, answer.finish_reason) == ("Let me think.", "\n\nHello there.", "stop")
    assert answer.usage == {"prompt_tokens": 9, "completion_tokens": 4, "total_tokens": 13}
    assert answer.message() == {"role": "assistant", "content": "\n\nHello there."}  # reasoning is not sent back


def test_a_tool_call_is_shown_once_whole_after_its_argument_fragments() -> None:
    first = {"index": 0, "id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": ""}}
    raw = (_chunk({"reasoning": "Call it."}) + _chunk({"tool_calls": [first]})
           + _chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"city": '}}]})
           + _chunk({"tool_calls": [{"index": 0, "function": {"arguments": '"Paris"}'}}]})
           + _chunk({"tool_calls": [{"index": 1, "id": "call_2", "function": {"name": "get_time", "arguments": "{}"}}]})
           + _chunk({}, "tool_calls") + DONE)
    shown, view = _show(raw, split=5)
    assert shown == [("reasoning", "Call it."), ("tool_call", "get_weather"), ("tool_call", "get_time")]
    calls = view.answer().tool_calls
    assert calls[0].arguments == '{"city": "Paris"}'
    assert view.answer().message()["tool_calls"][0] == {
        "id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}


def test_a_stream_without_finish_reason_still_shows_its_last_tool_call() -> None:
    call = {"index": 0, "id": "c", "function": {"name": "f", "arguments": "{}"}}
    shown, _ = _show(_chunk({"tool_calls": [call]}))
    assert shown == [("tool_call", "f")]


def test_tool_call_block_pretty_prints_json_and_keeps_broken_arguments() -> None:
    header, body = tool_call_block(ToolCallDraft(index=0, id="call_9", name="get_weather",
                                                 arguments='{"city":"Paris","unit":"celsius"}'))
    assert header == "tool call get_weather (call_9)"
    assert body == '{\n  "city": "Paris",\n  "unit": "celsius"\n}'
    _, broken = tool_call_block(ToolCallDraft(index=0, name="f", arguments='{"city": "Par'))
    assert broken.startswith('{"city": "Par') and "not valid JSON" in broken


def test_tokens_add_up_what_the_server_reported() -> None:
    tally = TokenTally()
    assert tally.summary() == "no request yet in this conversation"
    tally.add({"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15})
    tally.add({"prompt_tokens": 30, "completion_tokens": 7, "total_tokens": 37})
    tally.add(None)
    assert (tally.prompt, tally.completion, tally.last_prompt, tally.without_usage) == (40, 12, 30, 1)
    assert tally.summary().startswith("52 tokens over 2 requests: 40 prompt, 12 completion")
    assert "1 answer(s) carried no usage" in tally.summary()


def _answer_with_call() -> Any:
    view = StreamView()
    parser = SSEParser()
    call = {"index": 0, "id": "call_1", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
    for event in parser.feed(_chunk({"tool_calls": [call]}, "tool_calls") + DONE):
        view.add(event)
    return view.answer()


def test_conversation_tool_results_pending_and_declined() -> None:
    c = Conversation(system="be brief")
    c.add_user("weather?")
    c.add_answer(_answer_with_call())
    assert [p["id"] for p in c.pending_calls()] == ["call_1"]
    assert c.add_tool_result('{"temp": 12}')["id"] == "call_1"
    assert c.pending_calls() == []
    with pytest.raises(ValueError, match="no tool call is waiting"):
        c.add_tool_result("again")
    c.add_answer(_answer_with_call())
    assert c.decline_pending() == 1
    assert c.messages[-1] == {"role": "tool", "tool_call_id": "call_1", "content": DECLINED_RESULT}
    assert c.request_messages()[0] == {"role": "system", "content": "be brief"}
    c.reset()
    assert c.messages == [] and c.system == "be brief" and c.tokens.requests == 0


def test_history_document_round_trips_and_refuses_what_it_did_not_write() -> None:
    c = Conversation(system="s")
    c.add_user("hi")
    c.add_answer(_answer_with_call())
    again = Conversation.from_json(json.loads(json.dumps(c.to_json())))
    assert (again.system, again.messages, again.tokens) == (c.system, c.messages, c.tokens)
    for bad in ({}, {"version": 99, "messages": []}, {"version": 1, "messages": [{"role": "root"}]}, [1]):
        with pytest.raises(ValueError):
            Conversation.from_json(bad)


def test_slash_commands() -> None:
    assert parse_command("  hello ") == Command("", "hello")
    assert parse_command("/system Be terse.") == Command("/system", "Be terse.")
    assert parse_command("/quit") == Command("/exit")
    assert parse_command("//etc/hosts is a file") == Command("", "/etc/hosts is a file")
    with pytest.raises(ValueError, match="unknown command '/rest'"):
        parse_command("/rest")


def test_request_body_asks_for_usage_when_streaming_and_offers_tools() -> None:
    c = Conversation()
    c.add_user("hi")
    tool = {"type": "function", "function": {"name": "f"}}
    body = request_body("glm", c, stream=True, tools=[tool], max_tokens=64, thinking=False)
    assert body["stream_options"] == {"include_usage": True}
    assert body["tools"] == [tool] and body["tool_choice"] == "auto" and body["max_tokens"] == 64
    assert body["chat_template_kwargs"] == {"enable_thinking": False}
    plain = request_body("glm", c, stream=False)
    assert "stream_options" not in plain and "tools" not in plain and "chat_template_kwargs" not in plain


def test_check_tools() -> None:
    assert check_tools([{"function": {"name": "f"}}], "x") == [{"type": "function", "function": {"name": "f"}}]
    assert check_tools({"tools": [{"type": "function", "function": {"name": "f"}}]}, "x")[0]["function"]["name"] == "f"
    for bad in ([], {}, [{"name": "f"}], [{"type": "retrieval", "function": {"name": "f"}}]):
        with pytest.raises(ValueError):
            check_tools(bad, "x")


def test_history_name_never_carries_credentials() -> None:
    assert history_name("glm-a1", "https://1.2.3.4:443/v1") == "deployment-glm-a1"
    assert history_name(None, "http://127.0.0.1:8000/v1") == "url-127.0.0.1_8000"
    assert history_name(None, "https://user:pw@host:1/v1") == "url-host_1"
