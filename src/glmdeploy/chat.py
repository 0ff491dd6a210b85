"""The logic of ``glmdeploy chat`` with no I/O: the conversation, what a streamed answer shows, token tallies.

- ``Conversation``: the system prompt and the messages sent with each request, the tool calls still
  waiting for a result, and the token usage the server reported so far. It round-trips through a
  plain JSON document (``to_json``/``from_json``): the history file in the state directory. It holds
  messages only, never a key or a URL with one.
- ``StreamView``: folds the SSE events of one streamed answer (through ``sse.ChatStreamAssembly``,
  which knows both GLM reasoning field names) into display pieces, in the order they are shown:
  reasoning text as it arrives, answer text as it arrives, then each tool call once complete.
- ``tool_call_block``: a tool call as a structured block: its name and id, then its arguments as
  indented JSON (the raw text when the model's arguments are not JSON).
- ``parse_command``: the REPL's slash commands.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from glmdeploy.sse import ChatStreamAssembly, SSEEvent, ToolCallDraft

HISTORY_VERSION = 1
COMMANDS = ("/reset", "/system", "/tokens", "/tool", "/exit", "/help")
HELP = (
    "/reset          forget the conversation (the system prompt stays)\n"
    "/system TEXT    set the system prompt for the next requests (/system alone clears it)\n"
    "/tokens         token usage the server reported in this conversation\n"
    "/tool TEXT      answer the model's pending tool call with TEXT (its result)\n"
    "/exit           leave (so do Ctrl-D and /quit)"
)

DECLINED_RESULT = "(not run: the user moved on without running this tool)"

PieceKind = Literal["reasoning", "content", "tool_call"]


@dataclass(frozen=True)
class Piece:
    """Something to show, in stream order: reasoning or answer text, or a finished tool call."""

    kind: PieceKind
    text: str = ""
    call: ToolCallDraft | None = None


@dataclass
class Answer:
    """One assistant turn as the server gave it, streamed or not."""

    content: str = ""
    reasoning: str = ""
    tool_calls: list[ToolCallDraft] = field(default_factory=list)
    finish_reason: str | None = None
    usage: dict[str, Any] | None = None
    model: str | None = None

    def message(self) -> dict[str, Any]:
        """The assistant message to send back in later requests (reasoning is not sent back)."""
        message: dict[str, Any] = {"role": "assistant", "content": self.content}
        if self.tool_calls:
            message["tool_calls"] = [
                {"id": c.id, "type": c.type or "function", "function": {"name": c.name, "arguments": c.arguments}}
                for c in self.tool_calls
            ]
        return message


class StreamView:
    """What a streamed answer shows as its events arrive, and the ``Answer`` it adds up to."""

    def __init__(self) -> None:
        self.assembly = ChatStreamAssembly()
        self._shown_reasoning = 0
        self._shown_content = 0
        self._shown_calls = 0

    def add(self, event: SSEEvent) -> list[Piece]:
        """Take one event (``StreamFormatError`` for one that is not a chat chunk); the new pieces to show."""
        self.assembly.add_event(event)
        pieces: list[Piece] = []
        a = self.assembly
        if len(a.reasoning) > self._shown_reasoning:
            pieces.append(Piece("reasoning", a.reasoning[self._shown_reasoning:]))
            self._shown_reasoning = len(a.reasoning)
        if len(a.content) > self._shown_content:
            pieces.append(Piece("content", a.content[self._shown_content:]))
            self._shown_content = len(a.content)
        # A call is shown once a later call starts or the choice finishes: its arguments arrive in fragments.
        calls = a.ordered_tool_calls()
        ready = len(calls) if (a.finish_reason or a.done) else max(0, len(calls) - 1)
        for call in calls[self._shown_calls:ready]:
            pieces.append(Piece("tool_call", call=call))
        self._shown_calls = max(self._shown_calls, ready)
        return pieces

    def finish(self) -> list[Piece]:
        """The end of the stream: tool calls not shown yet (a stream without a finish reason)."""
        calls = self.assembly.ordered_tool_calls()
        pieces = [Piece("tool_call", call=c) for c in calls[self._shown_calls:]]
        self._shown_calls = len(calls)
        return pieces

    def answer(self) -> Answer:
        a = self.assembly
        return Answer(
            content=a.content, reasoning=a.reasoning, tool_calls=a.ordered_tool_calls(),
            finish_reason=a.finish_reason, usage=a.usage, model=a.model,
        )


def tool_call_block(call: ToolCallDraft) -> tuple[str, str]:
    """(header, body) of a tool call: ``tool call get_weather (call_1)`` and its arguments as indented JSON."""
    header = f"tool call {call.name or '(no name)'}" + (f" ({call.id})" if call.id else "")
    try:
        body = json.dumps(json.loads(call.arguments), indent=2, ensure_ascii=False)
    except ValueError:
        body = call.arguments + "\n(the arguments are not valid JSON)"
    return header, body


# ------------------------------------------------------------------------------------ conversation


@dataclass
class TokenTally:
    """Token usage as the server reported it (``usage``), summed over the requests of a conversation."""

    requests: int = 0
    prompt: int = 0
    completion: int = 0
    without_usage: int = 0  # requests whose answer carried no usage
    last_prompt: int | None = None

    def add(self, usage: Mapping[str, Any] | None) -> None:
        self.requests += 1
        prompt = usage.get("prompt_tokens") if usage else None
        completion = usage.get("completion_tokens") if usage else None
        if not isinstance(prompt, int) or not isinstance(completion, int):
            self.without_usage += 1
            return
        self.prompt += prompt
        self.completion += completion
        self.last_prompt = prompt

    def summary(self) -> str:
        if self.requests == 0:
            return "no request yet in this conversation"
        counted = self.requests - self.without_usage
        text = (
            f"{self.prompt + self.completion} tokens over {counted} request{'s' if counted != 1 else ''}: "
            f"{self.prompt} prompt, {self.completion} completion"
        )
        if self.last_prompt is not None:
            text += f"; the last prompt was {self.last_prompt} tokens (the conversation's current length)"
        if self.without_usage:
            text += f"; {self.without_usage} answer(s) carried no usage"
        return text


@dataclass
class Conversation:
    system: str | None = None
    messages: list[dict[str, Any]] = field(default_factory=list)
    tokens: TokenTally = field(default_factory=TokenTally)

    def request_messages(self) -> list[dict[str, Any]]:
        head = [{"role": "system", "content": self.system}] if self.system else []
        return head + self.messages

    def add_user(self, text: str) -> None:
        self.messages.append({"role": "user", "content": text})

    def add_answer(self, answer: Answer) -> None:
        self.messages.append(answer.message())
        self.tokens.add(answer.usage)

    def pending_calls(self) -> list[dict[str, Any]]:
        """The last assistant message's tool calls that have no tool result yet, in order."""
        answered: set[str] = set()
        for message in reversed(self.messages):
            if message.get("role") == "tool":
                answered.add(str(message.get("tool_call_id")))
            elif message.get("role") == "assistant":
                return [c for c in message.get("tool_calls") or [] if str(c.get("id")) not in answered]
            else:
                return []
        return []

    def add_tool_result(self, text: str) -> dict[str, Any]:
        """Answer the first pending tool call with ``text``; returns that call. ValueError when none waits."""
        pending = self.pending_calls()
        if not pending:
            raise ValueError("no tool call is waiting for a result")
        call = pending[0]
        self.messages.append({"role": "tool", "tool_call_id": call.get("id"), "content": text})
        return call

    def decline_pending(self) -> int:
        """Answer every pending tool call as not run (a new user message while the model waits for results:
        a chat template expects a result after each call). Returns how many there were."""
        pending = self.pending_calls()
        for call in pending:
            self.messages.append({"role": "tool", "tool_call_id": call.get("id"), "content": DECLINED_RESULT})
        return len(pending)

    def reset(self) -> None:
        self.messages = []
        self.tokens = TokenTally()

    def to_json(self) -> dict[str, Any]:
        return {
            "version": HISTORY_VERSION,
            "system": self.system,
            "messages": self.messages,
            "tokens": {
                "requests": self.tokens.requests, "prompt": self.tokens.prompt,
                "completion": self.tokens.completion, "without_usage": self.tokens.without_usage,
                "last_prompt": self.tokens.last_prompt,
            },
        }

    @classmethod
    def from_json(cls, data: Any) -> Conversation:
        """A saved history; ValueError when it is not one this version wrote."""
        if not isinstance(data, dict) or data.get("version") != HISTORY_VERSION:
            raise ValueError("not a glmdeploy chat history")
        messages = data.get("messages")
        if not isinstance(messages, list) or not all(
            isinstance(m, dict) and m.get("role") in ("user", "assistant", "tool") for m in messages
        ):
            raise ValueError("the history's messages are malformed")
        system = data.get("system")
        tokens: dict[str, Any] = data["tokens"] if isinstance(data.get("tokens"), dict) else {}

        def count(key: str) -> int:
            value = tokens.get(key)
            return value if isinstance(value, int) and value >= 0 else 0

        last = tokens.get("last_prompt")
        tally = TokenTally(requests=count("requests"), prompt=count("prompt"), completion=count("completion"),
                           without_usage=count("without_usage"), last_prompt=last if isinstance(last, int) else None)
        return cls(system=system if isinstance(system, str) and system else None, messages=messages, tokens=tally)


# --------------------------------------------------------------------------------- slash commands


@dataclass(frozen=True)
class Command:
    name: str  # "/reset", ...; "" for a message to send
    argument: str = ""


def parse_command(line: str) -> Command:
    """A REPL line: a slash command (``/exit``, ``/system TEXT``, ...) or a message (name ``""``).

    ``//text`` sends ``/text`` as a message. ValueError for an unknown command.
    """
    text = line.strip()
    if text.startswith("//"):
        return Command("", text[1:])
    if not text.startswith("/"):
        return Command("", text)
    name, _, argument = text.partition(" ")
    name = {"/quit": "/exit", "/clear": "/reset"}.get(name, name)
    if name not in COMMANDS:
        raise ValueError(f"unknown command {name!r}: try /help (start a message with // to send a leading /)")
    return Command(name, argument.strip())


_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def history_name(label: str | None, api_base: str) -> str:
    """The history file's stem: the deployment's name, or the URL's host and port for ``--url``."""
    if label:
        return "deployment-" + _UNSAFE.sub("_", label)
    host = api_base.split("://", 1)[-1].split("/", 1)[0].rpartition("@")[2]  # never a user:password@
    return "url-" + _UNSAFE.sub("_", host)


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def request_body(
    model: str,
    conversation: Conversation,
    *,
    stream: bool,
    tools: list[dict[str, Any]] | None = None,
    max_tokens: int | None = None,
    thinking: bool | None = None,
) -> dict[str, Any]:
    """The chat completions request for the conversation's next answer.

    ``stream_options.include_usage`` asks for the usage chunk before ``[DONE]``: SGLang and vLLM send it
    only when asked, LightLLM always (shared/reference/engines.md, "Usage in stream"); all three accept
    the option. ``thinking`` None leaves GLM's default (thinking on) alone.
    """
    body: dict[str, Any] = {"model": model, "messages": conversation.request_messages(), "stream": stream}
    if stream:
        body["stream_options"] = {"include_usage": True}
    if tools:
        body["tools"] = tools
        body["tool_choice"] = "auto"
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    if thinking is not None:
        body["chat_template_kwargs"] = {"enable_thinking": thinking}
    return body


def check_tools(data: Any, source: str) -> list[dict[str, Any]]:
    """An OpenAI ``tools`` array (a list of ``{"type": "function", "function": {"name": ...}}``); ValueError else."""
    if isinstance(data, dict) and isinstance(data.get("tools"), list):
        data = data["tools"]  # a request body's "tools" key, pasted whole
    if not isinstance(data, list) or not data:
        raise ValueError(f"{source} must hold a non-empty JSON array of tools (OpenAI's 'tools' format)")
    for position, tool in enumerate(data, 1):
        function = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str) or not function["name"]:
            raise ValueError(f"{source}: tool {position} is not {{\"type\": \"function\", \"function\": "
                             "{\"name\": ..., \"parameters\": {...}}}")
        if tool.get("type", "function") != "function":
            raise ValueError(f"{source}: tool {position} has type {tool.get('type')!r}; only 'function' exists")
    return [{"type": "function", **tool} for tool in data]
