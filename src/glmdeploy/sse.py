"""Server-sent events as OpenAI-compatible servers stream them, and the chat answer they add up to.

``SSEParser`` is incremental: feed it bytes as they arrive and it returns the events those bytes
completed, each stamped with the moment its last byte arrived (so a caller can tell a stream that
trickles in from one a proxy buffered). It follows the WHATWG event-stream rules, which is what
makes it tolerant: CR, LF and CRLF line ends (even split across reads), ``:`` comment lines,
multi-line ``data``, and ``data:`` with or without the space (LightLLM's native stream omits it).

``ChatStreamAssembly`` folds the JSON chunks of a ``chat.completions`` stream back into one answer:
content, reasoning (``reasoning_content`` or ``reasoning``, the GLM servers' two names), tool calls
reassembled per index from their argument fragments (one delta per call, as vLLM 0.15 sends them,
or many, as SGLang and newer vLLM do), the finish reason and the usage chunk.
"""

from __future__ import annotations

import codecs
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

DONE = "[DONE]"


@dataclass(frozen=True)
class SSEEvent:
    """One dispatched event. ``arrived`` is the clock reading when the bytes that completed it came in."""

    data: str
    event: str = "message"
    id: str | None = None
    retry: int | None = None
    arrived: float = 0.0


class SSEParser:
    """Incremental event-stream parser: ``feed(bytes)`` returns the events completed so far."""

    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        self._clock = clock
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._buffer = ""
        self._data: list[str] = []
        self._event = ""
        self._id: str | None = None
        self._retry: int | None = None
        self._started = False
        self._skip_lf = False
        self.bytes_seen = 0

    def feed(self, chunk: bytes, at: float | None = None) -> list[SSEEvent]:
        """Parse ``chunk``; ``at`` defaults to now on the parser's clock."""
        when = self._clock() if at is None else at
        self.bytes_seen += len(chunk)
        text = self._decoder.decode(chunk)
        if not self._started and text:
            self._started = True
            text = text.removeprefix("\ufeff")
        return self._consume(text, when, final=False)

    def close(self, at: float | None = None) -> list[SSEEvent]:
        """End of stream: flush what is left. A last event without its blank line is still returned."""
        when = self._clock() if at is None else at
        events = self._consume(self._decoder.decode(b"", final=True), when, final=True)
        if self._data:
            events.append(self._dispatch(when))
        return events

    @property
    def unterminated(self) -> bool:
        """Whether bytes are waiting for a line end or an event for its blank line."""
        return bool(self._buffer) or bool(self._data)

    def _consume(self, text: str, when: float, *, final: bool) -> list[SSEEvent]:
        if self._skip_lf and text:
            # The LF of a CRLF split across reads (an empty read in between changes nothing).
            if text.startswith("\n"):
                text = text[1:]
            self._skip_lf = False
        buffer = self._buffer + text
        events: list[SSEEvent] = []
        start = 0
        length = len(buffer)
        while start < length:
            cr = buffer.find("\r", start)
            lf = buffer.find("\n", start)
            if cr == -1 and lf == -1:
                break
            end = lf if cr == -1 else cr if lf == -1 else min(cr, lf)
            line = buffer[start:end]
            if buffer[end] == "\r":
                if end + 1 < length:
                    start = end + 2 if buffer[end + 1] == "\n" else end + 1
                else:
                    # A CR at the very end: its LF may be the first byte of the next read.
                    self._skip_lf = True
                    start = end + 1
            else:
                start = end + 1
            event = self._line(line, when)
            if event is not None:
                events.append(event)
        self._buffer = buffer[start:]
        if final and self._buffer:
            event = self._line(self._buffer, when)
            self._buffer = ""
            if event is not None:
                events.append(event)
        return events

    def _line(self, line: str, when: float) -> SSEEvent | None:
        if line == "":
            if self._data:
                return self._dispatch(when)
            self._reset()
            return None
        if line.startswith(":"):
            return None
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id":
            if "\0" not in value:
                self._id = value
        elif name == "retry" and _is_retry(value):
            self._retry = int(value)
        return None

    def _reset(self) -> None:
        self._data = []
        self._event = ""

    def _dispatch(self, when: float) -> SSEEvent:
        event = SSEEvent(
            data="\n".join(self._data), event=self._event or "message", id=self._id, retry=self._retry, arrived=when
        )
        self._reset()
        return event


def _is_retry(value: str) -> bool:
    """ASCII digits only (WHATWG; str.isdigit also takes '²' and other scripts), and a sane length."""
    return 0 < len(value) <= 18 and value.isascii() and value.isdigit()


# --------------------------------------------------------------------------------- chat assembly


class StreamFormatError(ValueError):
    """A chunk that is not the JSON object a chat completions stream sends."""


@dataclass
class ToolCallDraft:
    """One tool call as its deltas arrive: the id and name once, the arguments in fragments."""

    index: int
    id: str = ""
    type: str = ""
    name: str = ""
    arguments: str = ""
    deltas: int = 0


@dataclass
class ChatStreamAssembly:
    """The answer a chat completions stream adds up to, chunk by chunk."""

    content: str = ""
    reasoning: str = ""
    role: str | None = None
    finish_reason: str | None = None
    usage: dict[str, Any] | None = None
    model: str | None = None
    tool_calls: dict[int, ToolCallDraft] = field(default_factory=dict)
    chunks: int = 0
    done: bool = False
    first_token_at: float | None = None
    first_chunk_at: float | None = None
    last_chunk_at: float | None = None
    after_done: int = 0

    def add_event(self, event: SSEEvent) -> None:
        """Take one SSE event: ``[DONE]`` ends the stream, anything else must be a JSON chunk."""
        if self.done:
            self.after_done += 1
            return
        if event.data.strip() == DONE:
            self.done = True
            return
        try:
            chunk = json.loads(event.data)
        except (ValueError, RecursionError):  # nesting deeper than the stack is not a chunk either
            raise StreamFormatError(f"event {self.chunks + 1} is not JSON: {_clip(event.data)!r}") from None
        if not isinstance(chunk, dict):
            raise StreamFormatError(f"event {self.chunks + 1} is not a JSON object: {_clip(event.data)!r}")
        if "error" in chunk and "choices" not in chunk:
            raise StreamFormatError(f"the server sent an error in the stream: {_clip(json.dumps(chunk['error']))}")
        self.add_chunk(chunk, event.arrived)

    def add_chunk(self, chunk: dict[str, Any], arrived: float = 0.0) -> None:
        self.chunks += 1
        if self.first_chunk_at is None:
            self.first_chunk_at = arrived
        self.last_chunk_at = arrived
        if isinstance(chunk.get("model"), str):
            self.model = chunk["model"]
        if isinstance(chunk.get("usage"), dict):
            self.usage = chunk["usage"]
        choices = chunk.get("choices")
        if choices is None:
            return
        if not isinstance(choices, list):
            raise StreamFormatError(f"chunk {self.chunks}: 'choices' is not a list")
        for choice in choices:
            if not isinstance(choice, dict):
                raise StreamFormatError(f"chunk {self.chunks}: a choice is not an object")
            if choice.get("index", 0) != 0:
                continue  # smoke checks ask for n=1; other choices are not ours
            self._add_delta(choice.get("delta") or {}, arrived)
            if choice.get("finish_reason"):
                self.finish_reason = str(choice["finish_reason"])

    def _add_delta(self, delta: Any, arrived: float) -> None:
        if not isinstance(delta, dict):
            raise StreamFormatError(f"chunk {self.chunks}: 'delta' is not an object")
        if isinstance(delta.get("role"), str):
            self.role = delta["role"]
        content = delta.get("content")
        if isinstance(content, str) and content:
            self.content += content
            self._token(arrived)
        reasoning = reasoning_text(delta)
        if reasoning:
            self.reasoning += reasoning
            self._token(arrived)
        calls = delta.get("tool_calls")
        if calls:
            if not isinstance(calls, list):
                raise StreamFormatError(f"chunk {self.chunks}: 'tool_calls' is not a list")
            for position, call in enumerate(calls):
                self._add_tool_delta(call, position)
            self._token(arrived)

    def _add_tool_delta(self, call: Any, position: int) -> None:
        if not isinstance(call, dict):
            raise StreamFormatError(f"chunk {self.chunks}: a tool call delta is not an object")
        index = call.get("index")
        if not isinstance(index, int):
            index = position
        draft = self.tool_calls.setdefault(index, ToolCallDraft(index=index))
        draft.deltas += 1
        if isinstance(call.get("id"), str) and call["id"] and not draft.id:
            draft.id = call["id"]
        if isinstance(call.get("type"), str) and call["type"]:
            draft.type = call["type"]
        function = call.get("function") or {}
        if not isinstance(function, dict):
            raise StreamFormatError(f"chunk {self.chunks}: a tool call's 'function' is not an object")
        if isinstance(function.get("name"), str) and function["name"] and not draft.name:
            draft.name = function["name"]
        if isinstance(function.get("arguments"), str):
            draft.arguments += function["arguments"]

    def _token(self, arrived: float) -> None:
        if self.first_token_at is None:
            self.first_token_at = arrived

    def ordered_tool_calls(self) -> list[ToolCallDraft]:
        return [self.tool_calls[i] for i in sorted(self.tool_calls)]


def reasoning_text(message: dict[str, Any]) -> str:
    """The reasoning in a message or delta under either GLM field name (vLLM ≤0.15 sends both, equal)."""
    for key in ("reasoning_content", "reasoning"):
        value = message.get(key)
        if isinstance(value, str) and value:
            return value
    return ""


def _clip(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
