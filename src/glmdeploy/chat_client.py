"""The network and file side of ``glmdeploy chat``: one endpoint's HTTP client, and the history file.

The target is the one ``smoke`` uses (``smoke.Target``: a deployment's endpoint, key and TLS pin, or a
``--url``), and so is the transport: a pinned endpoint is checked with one TLS handshake before the
first request (``CertificateMismatch``, exit 9), redirects are never followed, and a local or pinned
server is never reached through a proxy from the environment.

Errors, each one line: cannot connect or no answer in time is ``EndpointUnreachable`` (exit 7); an
HTTP error, a broken stream or a body that is not a chat answer is ``ChatFailed`` (exit 5). The key
never appears in them: whatever the server sends back is masked first.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import httpx

from glmdeploy.chat import Answer, Conversation, Piece, StreamView
from glmdeploy.errors import EXIT_SMOKE_FAILED, EndpointUnreachable, GlmdeployError
from glmdeploy.sse import SSEParser, StreamFormatError

if TYPE_CHECKING:
    from glmdeploy.smoke import Target

CONNECT_TIMEOUT_S = 10.0
MAX_BODY_BYTES = 8 << 20
MIN_MASKED_KEY = 8  # as smoke: a toy key ("k") would mask every such letter


class ChatFailed(GlmdeployError):
    """The endpoint answered, but not with a chat answer (an HTTP error, a broken or malformed stream)."""

    exit_code = EXIT_SMOKE_FAILED
    code = "chat_failed"


class ChatEndpoint:
    """Chat completions against one target; ``close()`` (or ``with``) when done."""

    def __init__(self, target: Target, *, timeout_s: float) -> None:
        self.target = target
        self.timeout_s = timeout_s
        host = urlsplit(target.api_base).hostname or ""
        verify = target.trust.context(target.api_base) if target.trust is not None else True
        self.http = httpx.Client(
            verify=verify, follow_redirects=False,
            trust_env=host not in ("127.0.0.1", "localhost", "::1") and target.trust is None,
        )
        self._model = target.model

    def __enter__(self) -> ChatEndpoint:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.http.close()

    @property
    def shown(self) -> str:
        return self.target.label or self.target.api_base

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.target.api_key}"} if self.target.api_key else {}

    def _timeout(self) -> httpx.Timeout:
        return httpx.Timeout(self.timeout_s, connect=min(CONNECT_TIMEOUT_S, self.timeout_s))

    def _mask(self, text: str) -> str:
        key = self.target.api_key
        return text.replace(key, "[redacted]") if key and len(key) >= MIN_MASKED_KEY else text

    @contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        try:
            yield
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            from glmdeploy.smoke import describe_error

            raise EndpointUnreachable(f"cannot reach {self.shown}: {describe_error(exc)}") from None
        except httpx.TimeoutException:
            raise EndpointUnreachable(
                f"{what}: no answer from {self.shown} in {self.timeout_s:g} s", hint="a slow server needs --timeout"
            ) from None
        except httpx.TransportError as exc:
            from glmdeploy.smoke import describe_error

            raise ChatFailed(f"{what}: the connection to {self.shown} broke ({describe_error(exc)})") from None

    def _refused(self, what: str, response: httpx.Response) -> ChatFailed:
        body = self._mask(_read_capped(response).decode("utf-8", errors="replace"))
        detail = _error_message(body)
        hint = "check the key (--api-key or OPENAI_API_KEY with --url)" if response.status_code in (401, 403) else None
        said = f": {detail}" if detail else ""
        return ChatFailed(f"{what}: {self.shown} answered HTTP {response.status_code}{said}", hint=hint)

    def model(self) -> str:
        """The model to ask for: the deployment's or ``--model``, else the first ``/v1/models`` lists."""
        if self._model:
            return self._model
        with self._errors("GET /v1/models"), self.http.stream(
            "GET", self.target.api_base + "/models", headers=self._headers(), timeout=self._timeout()
        ) as response:
            if response.status_code != 200:
                raise self._refused("GET /v1/models", response)
            try:
                ids = [row["id"] for row in json.loads(_read_capped(response))["data"]]
            except (ValueError, KeyError, TypeError):
                raise ChatFailed(f"GET /v1/models: {self.shown} did not answer a model list; pass --model") from None
        if not ids or not isinstance(ids[0], str):
            raise ChatFailed(f"GET /v1/models: {self.shown} lists no model")
        self._model = ids[0]
        return ids[0]

    def complete(self, body: dict[str, Any]) -> dict[str, Any]:
        """A non-streamed completion: the server's JSON body as it sent it."""
        with self._errors("chat completion"), self.http.stream(
            "POST", self.target.api_base + "/chat/completions", json=body, headers=self._headers(),
            timeout=self._timeout(),
        ) as response:
            if response.status_code != 200:
                raise self._refused("chat completion", response)
            raw = _read_capped(response)
        try:
            data = json.loads(raw)
        except ValueError:
            raise ChatFailed(f"chat completion: {self.shown} answered something that is not JSON") from None
        if not isinstance(data, dict) or not isinstance(data.get("choices"), list):
            raise ChatFailed(f"chat completion: {self.shown} answered JSON without 'choices'")
        return data

    def stream(self, body: dict[str, Any], on_piece: Callable[[Piece], None]) -> Answer:
        """A streamed completion; each piece is shown (``on_piece``) as it arrives."""
        view = StreamView()
        parser = SSEParser()
        with self._errors("streamed answer"), self.http.stream(
            "POST", self.target.api_base + "/chat/completions", json=body, headers=self._headers(),
            timeout=self._timeout(),
        ) as response:
            if response.status_code != 200:
                raise self._refused("chat completion", response)
            if response.headers.get("content-type", "").startswith("application/json"):
                raise ChatFailed(f"chat completion: {self.shown} answered JSON, not an event stream")
            try:
                for raw in response.iter_bytes():
                    for event in parser.feed(raw, time.perf_counter()):
                        for piece in view.add(event):
                            on_piece(piece)
                    if view.assembly.done:
                        break
                for event in parser.close():
                    for piece in view.add(event):
                        on_piece(piece)
            except StreamFormatError as exc:
                raise ChatFailed(f"streamed answer: {self._mask(str(exc))}") from None
        for piece in view.finish():
            on_piece(piece)
        if not view.assembly.done and view.assembly.finish_reason is None:
            raise ChatFailed(f"streamed answer: the stream from {self.shown} ended before the answer did")
        return view.answer()


def _read_capped(response: httpx.Response) -> bytes:
    body = bytearray()
    for piece in response.iter_bytes():
        body += piece
        if len(body) > MAX_BODY_BYTES:
            raise ChatFailed(f"the answer exceeds {MAX_BODY_BYTES >> 20} MiB")
    return bytes(body)


def _error_message(body: str) -> str:
    """The ``error.message`` (or ``message``/``detail``) of an OpenAI-style error body, else its start."""
    try:
        data = json.loads(body)
    except ValueError:
        data = None
    if isinstance(data, dict):
        error = data.get("error")
        for value in (error.get("message") if isinstance(error, dict) else error, data.get("message"),
                      data.get("detail")):
            if isinstance(value, str) and value:
                body = value
                break
    text = " ".join(body.split())
    return text if len(text) <= 200 else text[:199] + "…"


# ----------------------------------------------------------------------------------- history file


def history_path(stem: str) -> Path:
    from glmdeploy import paths

    return paths.home() / "chat" / f"{stem}.json"


def load_history(path: Path) -> Conversation | None:
    """The saved conversation, or None when there is none; a file that is not one is a UsageError."""
    from glmdeploy.errors import UsageError

    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise UsageError(f"cannot read the chat history {path}: {exc.strerror or exc}") from None
    try:
        return Conversation.from_json(json.loads(text))
    except ValueError as exc:
        raise UsageError(f"the chat history {path} is unreadable ({exc})",
                         hint="remove it, or start with --new to overwrite it") from None


def save_history(path: Path, conversation: Conversation) -> None:
    """Write the history owner-only (0600), atomically: a crash leaves the old file or the new one."""
    from glmdeploy import paths

    paths.ensure_home()
    try:
        path.parent.mkdir(mode=0o700, exist_ok=True)
        temporary = path.with_name(path.name + ".tmp")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            os.fchmod(out.fileno(), 0o600)  # an older file's mode, or a umask, does not widen it
            json.dump(conversation.to_json(), out, ensure_ascii=False, indent=1)
            out.write("\n")
        os.replace(temporary, path)
    except OSError as exc:
        raise paths.unusable_state(path, exc) from None
