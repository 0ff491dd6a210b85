"""Deterministic stand-in for GLM-4.7-Flash: token counting and generation of reasoning, answers and tool calls.

Tokenizer (documented in docs/sandbox-engines.md): a token is a run of at most 4 word characters or a
single other non-space character, with any whitespace in front of it attached. ``"What's the weather?"``
is ``What``, ``'``, ``s``, `` the``, `` weat``, ``her``, ``?`` = 7 tokens. The prompt count follows the
GLM-4.7 chat template (engines.md §6): 2 tokens for ``[gMASK]<sop>``, one role token per message, the
message text, the tool schemas when tools are offered, and 2 for ``<|assistant|><think>``.

Generation is a list of ``Piece``s, one per generated token, in the order the model would emit them
(engines.md §6): reasoning (the prompt already ends inside ``<think>``), the hidden ``</think>``, then
either an answer or a ``<tool_call>NAME<arg_key>K</arg_key><arg_value>V</arg_value></tool_call>`` block.
The same seed and request always give the same pieces.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

_TOKEN = re.compile(r"\s*(?:\w{1,4}|[^\w\s])")
_COUNT = re.compile(r"\w{1,4}|[^\w\s]")
# "# Tools\n\nYou may call one or more functions ..." plus the XML-format instruction (engines.md §6).
TOOLS_PREAMBLE_TOKENS = 78

PieceKind = Literal["reasoning", "think_end", "content", "markup", "tool_name", "tool_args"]

_WORDS = (
    "the answer depends on a few simple facts that are worth checking carefully before we reply "
    "first we look at what was asked then we list the relevant points and keep the reply short "
    "clear and correct a good response explains the reasoning gives an example and notes any limits "
    "models like this one are tested with small prompts so the text here is plain and deterministic "
    "each sentence is built from common words in a fixed order chosen by the seed"
).split()


def count_tokens(text: str) -> int:
    return len(_COUNT.findall(text))


def split_tokens(text: str) -> list[str]:
    """Token strings whose concatenation is ``text`` (trailing whitespace joins the last one)."""
    pieces = _TOKEN.findall(text)
    consumed = sum(len(p) for p in pieces)
    if consumed < len(text):
        if pieces:
            pieces[-1] += text[consumed:]
        else:
            pieces = [text]
    return pieces


def message_text(content: Any) -> str:
    """OpenAI content: a string, or a list of parts of which the text parts count."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return ""


def prompt_tokens(messages: Sequence[Mapping[str, Any]], tools: Sequence[Any] | None) -> int:
    n = 2  # [gMASK]<sop>
    if tools:
        n += 1 + TOOLS_PREAMBLE_TOKENS + sum(count_tokens(json.dumps(t, sort_keys=True)) for t in tools)
    for message in messages:
        n += 1 + count_tokens(message_text(message.get("content")))
        for call in message.get("tool_calls") or ():
            n += 4 + count_tokens(json.dumps(call, sort_keys=True))
    return n + 2  # <|assistant|> and <think> (or </think> with thinking off)


@dataclass(frozen=True)
class Piece:
    kind: PieceKind
    text: str  # what this token adds to its channel (reasoning, content or the call's arguments)
    call: int = 0  # tool-call index for tool_name/tool_args pieces
    raw: str | None = None  # the token as the model wrote it, when that differs from ``text``

    @property
    def raw_text(self) -> str:
        return self.text if self.raw is None else self.raw


@dataclass(frozen=True)
class ToolCall:
    name: str
    arguments: dict[str, Any]


@dataclass
class Generation:
    """The natural completion (up to, not including, EOS) and what a tool parser would extract."""

    pieces: list[Piece]
    tool_calls: list[ToolCall]
    rng: random.Random
    _extra: list[Piece] = field(default_factory=list)

    def take(self, max_tokens: int | None, ignore_eos: bool) -> tuple[list[Piece], bool]:
        """The pieces actually generated, and whether generation hit ``max_tokens`` (finish "length")."""
        natural = len(self.pieces)
        if max_tokens is None:
            return self.pieces, False
        if ignore_eos:
            while natural + len(self._extra) < max_tokens:
                self._extra.extend(Piece("content", t) for t in split_tokens(" " + _sentence(self.rng)))
            return (self.pieces + self._extra)[:max_tokens], True
        if max_tokens <= natural:
            return self.pieces[:max_tokens], True
        return self.pieces, False


def _seeded(seed: int, *parts: object) -> random.Random:
    digest = hashlib.sha256(json.dumps([seed, *parts], sort_keys=True, default=str).encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def _sentence(rng: random.Random) -> str:
    words = [rng.choice(_WORDS) for _ in range(rng.randint(6, 12))]
    return " ".join(words).capitalize() + "."


def _paragraph(rng: random.Random, sentences: int) -> str:
    return " ".join(_sentence(rng) for _ in range(sentences))


def _last_user_text(messages: Sequence[Mapping[str, Any]]) -> str:
    for message in reversed(messages):
        if message.get("role") == "user":
            return message_text(message.get("content"))
    return ""


def _topic(text: str) -> str:
    words = re.findall(r"[\w'-]+", text)
    return " ".join(words[:8]) if words else "nothing in particular"


def _candidate_words(text: str) -> list[str]:
    """Words a tool argument could be filled from: capitalised names first (not a sentence's first
    word), then the remaining longer words, last word first."""
    words = re.findall(r"[A-Za-z][\w-]*", text)
    firsts = {m.group(1) for m in re.finditer(r"(?:^|[.!?]\s+)([A-Za-z][\w-]*)", text)}
    names = [w for w in words if w[0].isupper() and w not in firsts]
    others = [w for w in reversed(words) if len(w) > 3 and w not in names]
    return names + others + words[::-1]


def _tool_function(tool: Any) -> Mapping[str, Any]:
    if isinstance(tool, Mapping):
        fn = tool.get("function", tool)
        if isinstance(fn, Mapping):
            return fn
    return {}


def _relevant(fn: Mapping[str, Any], text: str) -> bool:
    lowered = text.lower()
    words = re.split(r"[^a-z0-9]+", f"{fn.get('name', '')} {fn.get('description', '')}".lower())
    return any(len(w) >= 4 and w in lowered for w in words)


def choose_tool(request: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The function the model calls, or None.

    Rule: a named ``tool_choice`` calls that function; otherwise, unless the last message is a tool
    result, the first offered tool whose name or description shares a word (4+ letters) with the last
    user message; with ``tool_choice: "required"`` the first tool when none matches.
    """
    tools = [t for t in request.get("tools") or () if _tool_function(t).get("name")]
    choice = request.get("tool_choice", "auto")
    if not tools or choice == "none":
        return None
    if isinstance(choice, Mapping):
        wanted = (choice.get("function") or {}).get("name")
        for tool in tools:
            if _tool_function(tool).get("name") == wanted:
                return _tool_function(tool)
        return None
    messages = request.get("messages") or []
    if messages and isinstance(messages[-1], Mapping) and messages[-1].get("role") == "tool":
        return None  # the result is in: answer with it
    text = _last_user_text(messages)
    for tool in tools:
        if _relevant(_tool_function(tool), text):
            return _tool_function(tool)
    return _tool_function(tools[0]) if choice == "required" else None


def tool_arguments(fn: Mapping[str, Any], text: str, rng: random.Random) -> dict[str, Any]:
    """Values for the required parameters, typed by their JSON schema; strings come from the prompt."""
    params = fn.get("parameters") or {}
    props: Mapping[str, Any] = params.get("properties") or {}
    required = [r for r in params.get("required") or () if r in props]
    words = iter(_candidate_words(text))
    args: dict[str, Any] = {}
    for name in required:
        schema = props.get(name) or {}
        kind = schema.get("type", "string")
        if schema.get("enum"):
            args[name] = schema["enum"][0]
        elif kind == "integer":
            args[name] = rng.randint(1, 10)
        elif kind == "number":
            args[name] = rng.randint(1, 100) / 4
        elif kind == "boolean":
            args[name] = True
        elif kind == "array":
            args[name] = []
        elif kind == "object":
            args[name] = {}
        else:
            args[name] = next(words, "default")
    return args


def _xml_value(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def generate_chat(request: Mapping[str, Any], *, seed: int, thinking: bool) -> Generation:
    """What the model writes for a chat request (thinking on: reasoning first)."""
    messages = request.get("messages") or []
    rng = _seeded(seed, messages, request.get("tools"), request.get("tool_choice"), thinking)
    user_text = _last_user_text(messages)
    fn = choose_tool(request)
    pieces: list[Piece] = []
    calls: list[ToolCall] = []
    if thinking:
        if fn is not None:
            reasoning = f"The user asks: {_topic(user_text)}. I should call {fn.get('name')} to answer this."
        else:
            reasoning = f"The user asks: {_topic(user_text)}. " + _paragraph(rng, rng.randint(2, 4))
        pieces += [Piece("reasoning", t) for t in split_tokens(reasoning)]
        pieces.append(Piece("think_end", "", raw="</think>"))
    if fn is None:
        pieces += [Piece("content", t) for t in split_tokens(_paragraph(rng, rng.randint(2, 5)))]
        return Generation(pieces, calls, rng)
    name = str(fn.get("name"))
    args = tool_arguments(fn, user_text, rng)
    calls.append(ToolCall(name, args))
    pieces.append(Piece("markup", "", raw="<tool_call>"))
    name_tokens = split_tokens(name)
    pieces += [Piece("markup", "", raw=t) for t in name_tokens[:-1]]
    pieces.append(Piece("tool_name", name, raw=name_tokens[-1]))
    arg_tokens: list[str] = []
    for key, value in args.items():
        arg_tokens += ["<arg_key>", *split_tokens(key), "</arg_key>", "<arg_value>"]
        arg_tokens += [*split_tokens(_xml_value(value)), "</arg_value>"]
    arg_tokens.append("</tool_call>")
    fragments = split_evenly(json.dumps(args, ensure_ascii=False), len(arg_tokens))
    pieces += [Piece("tool_args", f, raw=t) for f, t in zip(fragments, arg_tokens, strict=True)]
    return Generation(pieces, calls, rng)


def generate_text(prompt: str, *, seed: int) -> Generation:
    """A plain continuation for /v1/completions (no chat template, so no reasoning split)."""
    rng = _seeded(seed, prompt)
    return Generation([Piece("content", t) for t in split_tokens(" " + _paragraph(rng, rng.randint(2, 5)))], [], rng)


def split_evenly(text: str, parts: int) -> list[str]:
    """``parts`` consecutive slices of ``text`` that join back to it; any empty ones come first, so the
    last slice holds the end of the text (the closing ``}`` of a call's arguments)."""
    parts = max(1, parts)
    size, extra = divmod(len(text), parts)
    out, at = [], 0
    for i in range(parts):
        end = at + size + (1 if i >= parts - extra else 0)
        out.append(text[at:end])
        at = end
    return out


def raw_text(pieces: Sequence[Piece]) -> str:
    """The completion as the model wrote it, before any reasoning or tool parser (no-parser engines)."""
    return "".join(p.raw_text for p in pieces)
