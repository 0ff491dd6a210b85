"""``glmdeploy chat``: talk to a deployment (or any OpenAI-compatible ``--url``) from the terminal (issue 13 §5).

Two ways to use it:

- ``chat NAME``: a REPL. Answers stream in; reasoning is shown dimmed before the answer (on a terminal
  with colours; otherwise after a ``thinking:`` label), tool calls as blocks (name, id, indented JSON
  arguments). Slash commands: ``/reset``, ``/system TEXT``, ``/tokens``, ``/tool TEXT``, ``/exit``. The
  conversation is saved after every answer in the state directory (``chat/<name>.json``, mode 0600,
  messages only) and resumed next time; ``--new`` starts over.
- ``chat NAME -m TEXT``: one question, one answer on stdout, reasoning on stderr (so ``> file`` keeps
  the answer alone); ``--json`` prints the server's whole (non-streamed) response instead. No history
  is read or written.

The target, key and TLS pin are resolved as ``smoke`` resolves them (``smoke.Target``); the logic with
no I/O is ``glmdeploy.chat``, the HTTP side ``glmdeploy.chat_client``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import IO, TYPE_CHECKING, Annotated, Any

import typer

from glmdeploy.commands._common import (
    CaCert,
    Pin,
    emit_json,
    endpoint_target,
    endpoint_trust,
    handles_errors,
    output_closed,
    positive_seconds,
    say,
)

if TYPE_CHECKING:
    from glmdeploy.chat import Answer, Conversation, Piece
    from glmdeploy.chat_client import ChatEndpoint

Name = Annotated[
    str | None, typer.Argument(metavar="NAME", help="Deployment name (default: the only active one).")
]
Url = Annotated[
    str | None,
    typer.Option("--url", metavar="URL", help="Chat with this server instead: its root or base URL ending in /v1."),
]
EndpointKey = Annotated[
    str | None,
    typer.Option(
        "--api-key", metavar="KEY", envvar="OPENAI_API_KEY", show_envvar=True, show_default=False,
        help="The endpoint's API key (with --url; a deployment's own key is used otherwise).",
    ),
]
Model = Annotated[
    str | None,
    typer.Option("--model", metavar="MODEL", help="Model to ask for (with --url; default: the first listed)."),
]
Message = Annotated[
    str | None,
    typer.Option("--message", "-m", metavar="TEXT",
                 help="Ask this once and print the answer (reasoning on stderr); no REPL, no history."),
]
RawJson = Annotated[
    bool, typer.Option("--json", help="With -m: print the server's whole response (not streamed) as JSON on stdout.")
]
System = Annotated[str | None, typer.Option("--system", metavar="TEXT", help="The system prompt.")]
Tools = Annotated[
    Path | None,
    typer.Option("--tools", metavar="FILE.json", dir_okay=False,
                 help="Offer these tools (an OpenAI 'tools' JSON array); answer a call with /tool TEXT."),
]
DemoTool = Annotated[
    bool,
    typer.Option("--demo-tool", help="Offer a get_weather(city, unit) tool, to see a tool call (ask for the weather)."),
]
MaxTokens = Annotated[
    int | None, typer.Option("--max-tokens", metavar="N", min=1, max=262_144, help="Cap each answer's length.")
]
NoThinking = Annotated[
    bool, typer.Option("--no-thinking", help="Ask GLM not to think first (chat_template_kwargs.enable_thinking).")
]
New = Annotated[bool, typer.Option("--new", help="Start a new conversation instead of resuming the saved one.")]
Timeout = Annotated[
    float,
    typer.Option("--timeout", metavar="SECONDS", callback=positive_seconds, show_default=True,
                 help="Seconds to wait for the server: connecting, and between two pieces of an answer."),
]


@handles_errors
def chat(
    name: Name = None,
    url: Url = None,
    api_key: EndpointKey = None,
    model: Model = None,
    ca_cert: CaCert = None,
    pin: Pin = None,
    message: Message = None,
    json_output: RawJson = False,
    system: System = None,
    tools: Tools = None,
    demo_tool: DemoTool = False,
    max_tokens: MaxTokens = None,
    no_thinking: NoThinking = False,
    new: New = False,
    timeout: Timeout = 300.0,
) -> None:
    """Talk to a deployment or any OpenAI-compatible URL: a REPL, or one answer with -m.

    Exit 7 if the server cannot be reached or does not answer in time, 5 if it answers with an error
    (a refused key, a malformed stream), 9 if a pinned certificate does not match.
    """
    from glmdeploy.chat import Conversation, check_tools, history_name
    from glmdeploy.chat_client import ChatEndpoint, history_path, load_history
    from glmdeploy.errors import UsageError

    if json_output and message is None:
        raise UsageError("--json goes with -m TEXT (the REPL prints text)")
    if message is not None and not message.strip():
        raise UsageError("-m: the message is empty")
    offered = _tools(tools, demo_tool, check_tools)
    trust = endpoint_trust(url, ca_cert, pin)
    target = endpoint_target(name, url, api_key=api_key, model=model, trust=trust, purpose="chat with")
    thinking = False if no_thinking else None
    with ChatEndpoint(target, timeout_s=timeout) as endpoint:
        if message is not None:
            for check in ("reasoning", "tools"):
                if check in target.profile_skips and (check == "reasoning" or offered) and not json_output:
                    say(f"note: {target.profile_skips[check]}")
            conversation = Conversation(system=system or None)
            conversation.add_user(message)
            _ask_once(endpoint, conversation, offered, max_tokens, thinking, json_output)
            return
        path = history_path(history_name(target.label, target.api_base))
        saved = None if new else load_history(path)
        conversation = saved or Conversation()
        if system is not None:
            conversation.system = system or None
        _Repl(endpoint, conversation, path, offered, max_tokens, thinking).run(resumed=saved is not None)


def _tools(path: Path | None, demo: bool, check: Any) -> list[dict[str, Any]]:
    import json

    from glmdeploy.errors import UsageError

    offered: list[dict[str, Any]] = []
    if path is not None:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise UsageError(f"--tools: no such file: {path}") from None
        except OSError as exc:
            raise UsageError(f"--tools: cannot read {path}: {exc.strerror or exc}") from None
        except ValueError as exc:
            raise UsageError(f"--tools: {path} is not JSON ({exc})") from None
        try:
            offered = check(data, f"--tools {path}")
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    if demo:
        from glmdeploy.smoke import WEATHER_TOOL

        offered.append(WEATHER_TOOL)
    return offered


def _ask_once(endpoint: ChatEndpoint, conversation: Conversation, tools: list[dict[str, Any]],
              max_tokens: int | None, thinking: bool | None, json_output: bool) -> None:
    from glmdeploy.chat import request_body

    model = endpoint.model()
    if json_output:
        body = request_body(model, conversation, stream=False, tools=tools, max_tokens=max_tokens, thinking=thinking)
        emit_json(endpoint.complete(body))
        return
    body = request_body(model, conversation, stream=True, tools=tools, max_tokens=max_tokens, thinking=thinking)
    screen = _Screen(answer=sys.stdout, reasoning=sys.stderr)
    answer = endpoint.stream(body, screen.show)
    screen.end_turn()
    if answer.finish_reason == "length":
        say("note: the answer hit the length limit (finish_reason length; --max-tokens raises it)")


# ------------------------------------------------------------------------------------------ output


def _colours(stream: IO[str]) -> bool:
    if os.environ.get("NO_COLOR") or os.environ.get("TERM") == "dumb":
        return False
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


DIM, BOLD_CYAN, RESET = "\x1b[2m", "\x1b[1;36m", "\x1b[0m"


class _Screen:
    """Draws one answer as its pieces arrive: reasoning (dimmed, or after ``thinking:``), the answer,
    then tool-call blocks. Reasoning and answer may go to different streams (``-m``: stderr, stdout)."""

    def __init__(self, *, answer: IO[str], reasoning: IO[str]) -> None:
        self.out = answer
        self.thinking_out = reasoning
        self.colour = _colours(answer)
        self.thinking_colour = _colours(reasoning)
        self.in_reasoning = False
        self.in_content = False
        self.shown_reasoning = False
        self.line_open: dict[int, bool] = {}

    def _write(self, stream: IO[str], text: str) -> None:
        if not text:
            return
        try:
            stream.write(text)
            stream.flush()
        except BrokenPipeError:
            output_closed(stream)
        self.line_open[id(stream)] = not text.endswith("\n")

    def _close_line(self, stream: IO[str]) -> None:
        if self.line_open.get(id(stream)):
            self._write(stream, "\n")

    def show(self, piece: Piece) -> None:
        if piece.kind == "reasoning":
            if not self.in_reasoning:
                self._close_line(self.thinking_out)
                if not self.thinking_colour:
                    self._write(self.thinking_out, "thinking: ")
                self.in_reasoning = True
                self.shown_reasoning = True
            text = piece.text
            self._write(self.thinking_out, f"{DIM}{text}{RESET}" if self.thinking_colour else text)
        elif piece.kind == "content":
            if self.in_reasoning:
                self._end_reasoning()
            if not self.in_content and not piece.text.strip():
                return  # the blank a template leaves between thinking and answer
            if not self.in_content:
                self.in_content = True
                piece_text = piece.text.lstrip("\n")
                if self.shown_reasoning and self.thinking_out is self.out and not self.colour:
                    piece_text = "answer: " + piece_text
                self._write(self.out, piece_text)
            else:
                self._write(self.out, piece.text)
        elif piece.call is not None:
            from glmdeploy.chat import tool_call_block

            if self.in_reasoning:
                self._end_reasoning()
            self._close_line(self.out)
            header, body = tool_call_block(piece.call)
            indented = "".join(f"  {line}\n" for line in body.splitlines())
            self._write(self.out, (f"{BOLD_CYAN}{header}{RESET}\n" if self.colour else f"{header}\n") + indented)
            self.in_content = False

    def _end_reasoning(self) -> None:
        self.in_reasoning = False
        self._write(self.thinking_out, "\n" if self.thinking_out is not self.out else "\n\n")

    def end_turn(self) -> None:
        if self.in_reasoning:
            self._end_reasoning()
        self._close_line(self.out)
        self._close_line(self.thinking_out)


# -------------------------------------------------------------------------------------------- REPL


class _Repl:
    def __init__(self, endpoint: ChatEndpoint, conversation: Conversation, path: Path,
                 tools: list[dict[str, Any]], max_tokens: int | None, thinking: bool | None) -> None:
        self.endpoint = endpoint
        self.conversation = conversation
        self.path = path
        self.tools = tools
        self.max_tokens = max_tokens
        self.thinking = thinking
        self.interactive = _isatty(sys.stdin)

    def _print(self, text: str) -> None:
        try:
            print(text, flush=True)
        except BrokenPipeError:
            output_closed(sys.stdout)

    def run(self, *, resumed: bool) -> None:
        target = self.endpoint.target
        model = self.endpoint.model()
        engine = f", {target.engine}" if target.engine else ""
        self._print(f"chat with {self.endpoint.shown} ({model}{engine}); /help lists commands, /exit or Ctrl-D leaves")
        for check in ("reasoning", "tools"):
            if check in target.profile_skips and (check == "reasoning" or self.tools):
                self._print(f"note: {target.profile_skips[check]}")
        if resumed and self.conversation.messages:
            self._print(f"resumed {len(self.conversation.messages)} messages from {self.path} (/reset starts over)")
        if self.interactive:
            try:
                import readline  # noqa: F401  (line editing and recall for input())
            except ImportError:  # not every Python has it
                pass
        while True:
            try:
                line = input("you> " if self.interactive else "")
            except EOFError:
                if self.interactive:
                    self._print("")
                return
            except KeyboardInterrupt:
                self._print("")  # Ctrl-C at the prompt drops the line; /exit or Ctrl-D leave
                continue
            if not self._line(line):
                return

    def _line(self, line: str) -> bool:
        """Handle one input line; False to leave."""
        from glmdeploy.chat import HELP, parse_command

        try:
            command = parse_command(line)
        except ValueError as exc:
            self._print(f"error: {exc}")
            return True
        name, argument = command.name, command.argument
        if name == "/exit":
            return False
        if name == "/help":
            self._print(HELP)
        elif name == "/reset":
            self.conversation.reset()
            self._save()
            self._print("conversation reset" + (" (the system prompt stays)" if self.conversation.system else ""))
        elif name == "/system":
            self.conversation.system = argument or None
            self._save()
            self._print("system prompt set" if argument else "system prompt cleared")
        elif name == "/tokens":
            self._print(self.conversation.tokens.summary())
        elif name == "/tool":
            try:
                call = self.conversation.add_tool_result(argument)
            except ValueError as exc:
                self._print(f"error: {exc}")
                return True
            self._print(f"result sent for {call.get('function', {}).get('name')} ({call.get('id')})")
            if not self.conversation.pending_calls():
                self._ask()
        elif argument:
            declined = self.conversation.decline_pending()
            if declined:
                self._print(f"({declined} pending tool call(s) answered as not run)")
            self.conversation.add_user(argument)
            self._ask()
        return True

    def _ask(self) -> None:
        from glmdeploy.chat import request_body

        body = request_body(self.endpoint.model(), self.conversation, stream=True, tools=self.tools,
                            max_tokens=self.max_tokens, thinking=self.thinking)
        screen = _Screen(answer=sys.stdout, reasoning=sys.stdout)
        from glmdeploy.chat_client import ChatFailed

        try:
            answer: Answer = self.endpoint.stream(body, screen.show)
        except (KeyboardInterrupt, ChatFailed) as exc:
            screen.end_turn()
            if isinstance(exc, KeyboardInterrupt):
                self._print("(interrupted: the answer was dropped)")
            else:  # the server may answer the next message; a wrong target ends the command (exit 7, 9)
                self._print(f"error: {exc}")
            if self.conversation.messages and self.conversation.messages[-1].get("role") == "user":
                self.conversation.messages.pop()  # unanswered: not sent again with the next message
            return
        screen.end_turn()
        self.conversation.add_answer(answer)
        if answer.tool_calls:
            self._print("(the model waits for the result: /tool TEXT answers it, a new message skips it)")
        elif answer.finish_reason == "length":
            self._print("(the answer hit the length limit)")
        self._save()

    def _save(self) -> None:
        from glmdeploy.chat_client import save_history

        save_history(self.path, self.conversation)


def _isatty(stream: IO[str]) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
