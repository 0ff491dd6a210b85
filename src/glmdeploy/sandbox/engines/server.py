"""The HTTP side of a simulated engine: a plain ASGI app served by uvicorn's h11 protocol.

One app per engine. It knows three phases: listening-but-not-ready (SGLang's warmup window: /health is
503, other routes answer), ready, and stopping. Auth, health, /v1/models and the chat/completions
shapes follow the engine's ``Dialect``.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from email.utils import formatdate
from http import HTTPStatus
from typing import Any

from glmdeploy.sandbox.engines.config import EngineConfig
from glmdeploy.sandbox.engines.dialects import Dialect, bearer_matches, error_body
from glmdeploy.sandbox.engines.textgen import (
    Generation,
    Piece,
    count_tokens,
    generate_chat,
    generate_text,
    message_text,
    prompt_tokens,
)

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

_UNAUTHORIZED = b'{"error":"Unauthorized"}'
_NOT_FOUND = b'{"detail":"Not Found"}'
_SSE_HEADERS = [(b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache")]
_EOS_ID = 154820  # engines.md §1
# With no delay between tokens, this many SSE events go into one write: the bytes on the wire are
# the same events, only fewer syscalls (TCP would merge them anyway).
_COALESCE = 16


_NGINX_SERVER = b"nginx/1.18.0 (Ubuntu)"
_NGINX_502 = (
    b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n<center><h1>502 Bad Gateway</h1></center>\r\n"
    b"<hr><center>nginx/1.18.0 (Ubuntu)</center>\r\n</body>\r\n</html>\r\n"
)


def _proxy_key_matches(headers: list[tuple[bytes, bytes]], key: str) -> bool:
    """nginx's ``~*^Bearer[[:space:]]+KEY$``: case-insensitive, whitespace after the scheme."""
    for name, value in headers:
        if name.lower() == b"authorization":
            text = value.decode("latin-1")
            scheme, _, rest = text.partition(" ")
            return scheme.lower() == "bearer" and rest.lstrip().lower() == key.lower()
    return False


class RequestError(Exception):
    def __init__(self, status: int, message: str, kind: str = "BadRequestError", param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.kind = kind
        self.param = param


class EngineApp:
    """ASGI application of one simulated engine."""

    def __init__(
        self,
        cfg: EngineConfig,
        dialect: Dialect,
        *,
        faults: Mapping[str, str | None],
        seed: int,
        ttft_s: float,
        tpot_s: float,
        time_scale: float,
        access_log: Callable[[str, str, str, int], None],
        on_request: Callable[[int, int], None] = lambda _prompt, _running: None,
    ) -> None:
        self.cfg = cfg
        self.dialect = dialect
        self.faults = faults
        self.seed = seed
        self.ttft_s = ttft_s
        self.tpot_s = tpot_s
        self.time_scale = time_scale
        self.access_log = access_log
        self.on_request = on_request  # (prompt tokens, requests running): the engine's own traffic lines
        self.running = 0
        self.prompt_tokens_total = 0
        self.generated_tokens_total = 0
        self.ready = asyncio.Event()
        self.proxy = None if "no_auth" in faults else cfg.spec.proxy
        self.api_key = None if "no_auth" in faults else cfg.spec.engine_key
        # Behind an auth proxy the socket opens before the engine does; until then nginx answers 502.
        self.upstream_up = cfg.spec.proxy is None
        self._health_calls = 0
        first = faults.get("slow_first_token")
        self.slow_first_token = _seconds(first) if "slow_first_token" in faults else 0.0
        self.created = int(time.time())
        self.requests = 0
        # Every HTTP request that reached the port, before any check: (method, path, carried the key).
        self.request_log: list[tuple[str, str, bool]] = []
        self.server_state: Any = None  # uvicorn's ServerState, set once the socket listens
        self._date_at = 0.0
        # engine_exit: requests are held (never answered) and the first one is announced.
        self.hold_requests = False
        self.first_request = asyncio.Event()
        # engine_death: called with each generation request; returns a status to answer instead
        # (vLLM's 500), -1 to hold the request forever (LightLLM's router gone), or None to serve it.
        self.on_generate: Callable[[], Awaitable[int | None]] | None = None
        # After death: what /health answers while the server process still lives (None = as usual).
        self.health_override: int | None = None
        # What /metrics reports: requests queued behind warmup, and KV tokens the running requests hold.
        self.queued = 0
        self.kv_tokens_in_use = 0
        # A test's hold (POST /_sandbox/hold): generation requests stay running until released.
        self.hold_generation = False
        self._held: set[asyncio.Event] = set()

    def release_held(self) -> int:
        """End the hold: every held request goes on; returns how many were held."""
        self.hold_generation = False
        count = len(self._held)
        for event in list(self._held):
            event.set()
        return count

    @property
    def held(self) -> int:
        return len(self._held)

    # ------------------------------------------------------------------ plumbing

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        now = time.time()
        if self.server_state is not None and now - self._date_at >= 1.0:
            # uvicorn's Server refreshes the Date header once a second; we run its protocol without it.
            self._date_at = now
            others = [h for h in self.server_state.default_headers if h[0] != b"date"]
            self.server_state.default_headers = [(b"date", formatdate(now, usegmt=True).encode()), *others]
        method: str = scope["method"]
        path: str = scope["path"]
        status_box = [0]
        endpoint_key = (self.cfg.spec.api_key or "").encode()
        self.request_log.append((method, path, bool(endpoint_key) and any(
            name.lower() == b"authorization" and endpoint_key in value for name, value in scope["headers"]
        )))

        async def logged_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                status_box[0] = message["status"]
            await send(message)

        if self.proxy is not None:
            key = self.proxy.api_key
            if key and path not in self.proxy.open_paths and not _proxy_key_matches(scope["headers"], key):
                await self._raw(send, 401, self.proxy.unauthorized_body, b"application/json")
                return
        if not self.upstream_up:
            await self._raw(send, 502, _NGINX_502, b"text/html")
            return
        if self.hold_requests:
            self.first_request.set()
            await asyncio.Event().wait()  # the process dies under this request: the connection drops
        # Only what reaches the engine shows in its access log (nginx answers the two cases above itself).
        try:
            await self._dispatch(scope, method, path, receive, logged_send)
        finally:
            client = scope.get("client") or ("127.0.0.1", 0)
            self.access_log(method, path, f"{client[0]}:{client[1]}", status_box[0] or 500)

    async def _dispatch(self, scope: Scope, method: str, path: str, receive: Receive, send: Send) -> None:
        d = self.dialect
        if self.api_key and d.needs_key(method, path) and not bearer_matches(scope["headers"], self.api_key):
            await self._raw(send, 401, _UNAUTHORIZED, b"application/json")
            return
        route = (method if method != "HEAD" else "GET", path)
        if route in (("GET", "/health"), ("GET", "/health_generate"), ("GET", "/healthz")):
            if (path == "/health_generate" and d.kind != "sglang") or (path == "/healthz" and d.kind != "lightllm"):
                await self._raw(send, 404, _NOT_FOUND, b"application/json")
                return
            await self._health(send)
        elif route == ("GET", "/v1/models"):
            await self._json(send, 200, self._models())
        elif route == ("POST", "/v1/chat/completions"):
            await self._generate(receive, send, chat=True)
        elif route == ("POST", "/v1/completions"):
            await self._generate(receive, send, chat=False)
        elif route in (("GET", "/model_info"), ("GET", "/get_model_info")) and d.kind == "sglang":
            await self._json(send, 200, self._model_info())
        elif route == ("GET", "/ping") and d.kind == "sglang":
            await self._raw(send, 200, b"", None)
        elif route in (("GET", "/ping"), ("POST", "/ping")) and d.kind == "vllm":
            await self._health(send)
        elif route == ("GET", "/version") and d.kind == "vllm":
            await self._json(send, 200, {"version": self.cfg.version_text})
        elif route in (("GET", "/liveness"), ("POST", "/liveness"), ("GET", "/readiness"), ("POST", "/readiness")) and (
            d.kind == "lightllm"
        ):
            await self._json(send, 200, {"status": "ok"})
        elif route == ("GET", "/metrics") and (d.kind != "sglang" or "--enable-metrics" in self.cfg.spec.argv):
            # SGLang mounts /metrics only with --enable-metrics (engines.md §2); the others always.
            body = self._metrics().encode()
            # vLLM 0.24.0 answers with the Prometheus text format 1.0.0 (recorded); older: 0.0.4.
            version = b"1.0.0" if d.kind == "vllm" and self.cfg.version >= (0, 24) else b"0.0.4"
            await self._raw(send, 200, body, b"text/plain; version=" + version + b"; charset=utf-8")
        else:
            await self._raw(send, 404, _NOT_FOUND, b"application/json")

    def load(self) -> tuple[int, int, float]:
        """(running, waiting, KV usage 0..1) as /metrics reports them, and SGLang's batch log lines."""
        cap = max(1, self.cfg.max_running_requests)
        running = min(self.running, cap)
        waiting = self.queued + max(0, self.running - cap)
        usage = min(1.0, self.kv_tokens_in_use / max(1, self.cfg.kv_tokens))
        return running, waiting, usage

    def _metrics(self) -> str:
        """The engine's load gauges under its own names (glmdeploy.engines.metrics cites each engine's source).

        Requests beyond the engine's concurrency cap are reported waiting, as the engine's scheduler
        would queue them; the KV usage is the tokens the running requests hold over the pool.
        """
        running, waiting, usage = self.load()
        kind = self.dialect.kind
        if kind == "vllm":
            labels = f'{{engine="0",model_name="{self.cfg.spec.served_model}"}}'
            gauges = [("vllm:num_requests_running", "Number of requests in model execution batches.", running),
                      ("vllm:num_requests_waiting", "Number of requests waiting to be processed.", waiting),
                      ("vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.", usage)]
            counters = [("vllm:prompt_tokens", "Number of prefill tokens processed.", self.prompt_tokens_total),
                        ("vllm:generation_tokens", "Number of generation tokens processed.",
                         self.generated_tokens_total)]
        elif kind == "sglang":
            labels = f'{{model_name="{self.cfg.spec.served_model}"}}'
            gauges = [("sglang:num_running_reqs", "The number of running requests.", running),
                      ("sglang:num_queue_reqs", "The number of requests in the waiting queue.", waiting),
                      ("sglang:token_usage", "The token usage.", usage)]
            counters = [("sglang:prompt_tokens", "Number of prefill tokens processed.", self.prompt_tokens_total),
                        ("sglang:generation_tokens", "Number of generation tokens processed.",
                         self.generated_tokens_total)]
        else:
            labels = ""
            gauges = [("lightllm_queue_size", "Queue size", waiting),
                      ("lightllm_batch_current_size", "Current batch size", running)]
            counters = [("lightllm_request_count", "The total number of requests", self.requests)]
        lines: list[str] = []
        for name, doc, value in gauges:
            lines += [f"# HELP {name} {doc}", f"# TYPE {name} gauge", f"{name}{labels} {float(value)!r}"]
        for name, doc, value in counters:
            # prometheus_client exposes a counter NAME as NAME_total (and NAME_created).
            lines += [f"# HELP {name}_total {doc}", f"# TYPE {name}_total counter",
                      f"{name}_total{labels} {float(value)!r}"]
        return "\n".join(lines) + "\n"

    def _headers(self, content_type: bytes | None, length: int | None) -> list[tuple[bytes, bytes]]:
        headers: list[tuple[bytes, bytes]] = []
        if self.cfg.spec.proxy is not None:
            headers.append((b"server", _NGINX_SERVER))
        elif self.dialect.server_header is not None:
            headers.append((b"server", self.dialect.server_header))
        if content_type is not None:
            headers.append((b"content-type", content_type))
        if length is not None:
            headers.append((b"content-length", str(length).encode()))
        return headers

    async def _raw(self, send: Send, status: int, body: bytes, content_type: bytes | None) -> None:
        await send({"type": "http.response.start", "status": status, "headers": self._headers(content_type, len(body))})
        await send({"type": "http.response.body", "body": body})

    async def _json(self, send: Send, status: int, obj: object) -> None:
        await self._raw(send, status, json.dumps(obj).encode(), b"application/json")

    # ------------------------------------------------------------------ simple routes

    async def _health(self, send: Send) -> None:
        d = self.dialect
        if self.health_override is not None:
            ok = self.health_override == 200
            await self._raw(send, self.health_override, d.health_ok if ok else d.health_bad, d.health_type)
            return
        ok = self.ready.is_set()
        if ok and "health_flap" in self.faults:
            self._health_calls += 1
            ok = self._health_calls % 2 == 1
        if ok and d.kind == "sglang":
            # SGLang's /health runs a 1-token generation and sleeps 1 s first (engines.md §2.5). The
            # scheduler runs it only when no batch is running, and then logs its one-token Prefill line.
            if self.running == 0:
                self.on_request(1, 1)
            await asyncio.sleep(1.0 * self.time_scale)
        await self._raw(send, 200 if ok else 503, d.health_ok if ok else d.health_bad, d.health_type)

    def _models(self) -> dict[str, Any]:
        cfg = self.cfg
        card: dict[str, Any] = {
            "id": cfg.spec.served_model,
            "object": "model",
            "created": self.created,
            "owned_by": self.dialect.owned_by,
        }
        if self.dialect.kind == "sglang":
            card["root"] = cfg.spec.served_model
        elif self.dialect.kind == "vllm":
            card["root"] = cfg.model_path
            card["parent"] = None
        card["max_model_len"] = cfg.context_len
        if self.dialect.kind == "vllm":
            # The permission entry of vLLM's model card (recorded for 0.24.0, http-transcript.txt).
            card["permission"] = [{
                "id": f"modelperm-{self.seed:016x}"[-26:], "object": "model_permission", "created": self.created,
                "allow_create_engine": False, "allow_sampling": True, "allow_logprobs": True,
                "allow_search_indices": False, "allow_view": True, "allow_fine_tuning": False, "organization": "*",
                "group": None, "is_blocking": False,
            }]
        return {"object": "list", "data": [card]}

    def _model_info(self) -> dict[str, Any]:
        cfg = self.cfg
        return {
            "model_path": cfg.model_path,
            "tokenizer_path": cfg.model_path,
            "is_generation": True,
            "preferred_sampling_params": None,
            "weight_version": "default",
            "has_image_understanding": False,
            "model_type": cfg.arch.hf_model_type,
            "architectures": [cfg.architecture_name],
        }

    # ------------------------------------------------------------------ generation

    async def _read_json(self, receive: Receive) -> Any:
        chunks: list[bytes] = []
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise ConnectionResetError
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        try:
            return json.loads(b"".join(chunks) or b"null")
        except ValueError as exc:
            raise RequestError(400, f"Invalid JSON body: {exc}") from None

    async def _generate(self, receive: Receive, send: Send, *, chat: bool) -> None:
        self.requests += 1
        try:
            body = await self._read_json(receive)
            request = self._validate(body, chat=chat)
        except ConnectionResetError:
            return
        except RequestError as err:
            await self._json(send, err.status, error_body(self.dialect, err.status, str(err), err.kind, err.param))
            return
        if not self.ready.is_set():
            # Requests queue behind SGLang's warmup; with a warmup that never ends they wait until stop.
            self.queued += 1
            try:
                await self.ready.wait()
            finally:
                self.queued -= 1
        if self.on_generate is not None:
            instead = await self.on_generate()
            if instead == -1:
                await asyncio.Event().wait()  # no answer ever comes back
            if instead is not None:
                message = "EngineCore encountered an issue. See stack trace (above) for the root cause."
                await self._json(send, instead, error_body(self.dialect, instead, message, "InternalServerError"))
                return
        try:
            turn = Turn.build(self, request, chat=chat)
        except RequestError as err:
            await self._json(send, err.status, error_body(self.dialect, err.status, str(err), err.kind, err.param))
            return
        self.running += 1
        held_tokens = turn.prompt_tokens + len(turn.pieces)
        self.kv_tokens_in_use += held_tokens
        self.prompt_tokens_total += turn.prompt_tokens
        self.generated_tokens_total += len(turn.pieces)
        self.on_request(turn.prompt_tokens, self.running)
        try:
            if self.hold_generation:
                release = asyncio.Event()
                self._held.add(release)
                try:
                    await release.wait()
                finally:
                    self._held.discard(release)
            if request.get("stream"):
                await self._stream(turn, receive, send)
            else:
                await self._sleep_first_token()
                if self.tpot_s > 0 and len(turn.pieces) > 1:
                    await asyncio.sleep(self.tpot_s * (len(turn.pieces) - 1))  # the whole decode, then one answer
                await self._json(send, 200, turn.response())
        finally:
            self.running -= 1
            self.kv_tokens_in_use -= held_tokens

    def _validate(self, body: Any, *, chat: bool) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise RequestError(400, "The request body must be a JSON object.")
        if chat:
            messages = body.get("messages")
            if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
                raise RequestError(400, "'messages' must be a non-empty list of message objects.")
        elif not isinstance(body.get("prompt"), (str, list)):
            raise RequestError(400, "'prompt' must be a string or a list.")
        model = body.get("model")
        if self.dialect.checks_model and model is not None and model != self.cfg.spec.served_model:
            # param "model": recorded for vLLM 0.24.0 (http-transcript.txt, "chat wrong model").
            param = "model" if self.dialect.kind == "vllm" else None
            raise RequestError(404, f"The model `{model}` does not exist.", "NotFoundError", param)
        max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
        if max_tokens is not None and (
            not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1
        ):
            raise RequestError(400, "max_tokens must be a positive integer.")
        tools = body.get("tools")
        if chat and tools and self.dialect.kind == "vllm":
            choice = body.get("tool_choice", "auto")
            if choice == "auto" and not (self.cfg.auto_tool_choice and self.cfg.tool_call_parser):
                raise RequestError(
                    400, '"auto" tool choice requires --enable-auto-tool-choice and --tool-call-parser to be set'
                )
        return body

    async def _sleep_first_token(self) -> None:
        delay = self.ttft_s + self.slow_first_token
        if delay > 0:
            await asyncio.sleep(delay)

    async def _stream(self, turn: Turn, receive: Receive, send: Send) -> None:
        headers = self._headers(None, None) + _SSE_HEADERS
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        disconnected = asyncio.Event()

        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            disconnected.set()

        watcher = asyncio.ensure_future(watch())
        try:
            buffer: list[bytes] = []
            paced = self.tpot_s > 0
            first = True
            for event in turn.stream_events():
                if event is TOKEN_TICK:
                    if first:
                        first = False
                        await self._sleep_first_token()
                    elif paced:
                        await asyncio.sleep(self.tpot_s)
                    if disconnected.is_set():
                        return
                    continue
                buffer.append(event)
                if paced or first or len(buffer) >= _COALESCE:
                    await send({"type": "http.response.body", "body": b"".join(buffer), "more_body": True})
                    buffer.clear()
            if "no_done" not in self.faults:
                buffer.append(b"data: [DONE]\n\n")
            await send({"type": "http.response.body", "body": b"".join(buffer), "more_body": False})
        finally:
            watcher.cancel()


TOKEN_TICK = b""  # marks "one more token was generated" in the event stream


def _seconds(value: str | None) -> float:
    try:
        return max(0.0, float(value)) if value else 1.0
    except ValueError:
        return 1.0


def _sse(obj: object) -> bytes:
    return b"data: " + json.dumps(obj, separators=(", ", ": "), ensure_ascii=False).encode() + b"\n\n"


class Turn:
    """One request's generation, rendered in the engine's dialect."""

    def __init__(
        self,
        app: EngineApp,
        request: dict[str, Any],
        generation: Generation,
        pieces: list[Piece],
        hit_limit: bool,
        prompt_tokens: int,
        *,
        chat: bool,
        split_reasoning: bool,
        parse_tools: bool,
    ) -> None:
        self.app = app
        self.d = app.dialect
        self.request = request
        self.generation = generation
        self.pieces = pieces
        self.hit_limit = hit_limit
        self.prompt_tokens = prompt_tokens
        self.chat = chat
        self.split_reasoning = split_reasoning
        self.parse_tools = parse_tools
        self.broken_args = "broken_tool_parser" in app.faults
        self.id = self.d.response_id() if chat else "cmpl-" + self.d.response_id()[-32:]
        # LightLLM's request model defaults to "default" and is echoed like any other (engines.md §4.5).
        self.model = request.get("model") or ("default" if self.d.kind == "lightllm" else app.cfg.spec.served_model)
        if self.d.checks_model:
            self.model = app.cfg.spec.served_model
        self.created = int(time.time())
        self.call_ids = [self.d.tool_call_id() for _ in generation.tool_calls]

    @classmethod
    def build(cls, app: EngineApp, request: dict[str, Any], *, chat: bool) -> Turn:
        cfg = app.cfg
        max_tokens = request.get("max_completion_tokens", request.get("max_tokens"))
        ignore_eos = bool(request.get("ignore_eos"))
        if chat:
            kwargs = request.get("chat_template_kwargs") or {}
            thinking = kwargs.get("enable_thinking", kwargs.get("thinking", True)) is not False
            generation = generate_chat(request, seed=app.seed, thinking=thinking)
            prompt = prompt_tokens(request["messages"], request.get("tools"))
            # Reasoning is split only with a reasoning parser; reasoning_leak behaves as if it were off.
            split = cfg.reasoning_parser is not None and "reasoning_leak" not in app.faults
            tools_on = bool(request.get("tools")) and request.get("tool_choice", "auto") != "none"
            parse_tools = tools_on and cfg.tool_call_parser is not None
            if cfg.kind == "vllm":
                parse_tools = parse_tools and (cfg.auto_tool_choice or request.get("tool_choice") not in (None, "auto"))
        else:
            raw_prompt = request["prompt"]
            if isinstance(raw_prompt, list) and raw_prompt and all(isinstance(t, int) for t in raw_prompt):
                prompt = len(raw_prompt)
                text = " ".join(str(t) for t in raw_prompt)
            else:
                text = raw_prompt if isinstance(raw_prompt, str) else " ".join(message_text(p) for p in raw_prompt)
                prompt = count_tokens(text)
            generation = generate_text(text, seed=app.seed)
            split = parse_tools = False
        if max_tokens is not None and cfg.kind == "vllm" and cfg.version >= (0, 24) and max_tokens > cfg.context_len:
            # Recorded for vLLM 0.24.0 (http-transcript.txt, "chat too long").
            raise RequestError(
                400,
                f"max_tokens={max_tokens} cannot be greater than max_model_len=max_total_tokens={cfg.context_len}. "
                f"Please request fewer output tokens. (parameter=max_tokens, value={max_tokens})",
                param="max_tokens",
            )
        if max_tokens is not None and prompt + max_tokens > cfg.context_len:
            raise_too_long(cfg.context_len, prompt, max_tokens)
        pieces, hit = generation.take(max_tokens, ignore_eos)
        return cls(
            app, request, generation, pieces, hit, prompt, chat=chat, split_reasoning=split, parse_tools=parse_tools
        )

    # -------------------------------------------------------------- shared

    def _channels(self, piece: Piece) -> tuple[str, str]:
        """Which output field a generated token lands in, given the parsers that are on."""
        kind = piece.kind
        if kind in ("reasoning", "think_end") and not self.split_reasoning:
            return "content", piece.raw_text
        if kind in ("markup", "tool_name", "tool_args") and not self.parse_tools:
            return "content", piece.raw_text
        return kind, piece.text

    def _completed_calls(self) -> int:
        """Tool calls whose closing tag was generated (a parser only reports complete calls)."""
        total = sum(1 for p in self.pieces if p.kind == "tool_args")
        natural = sum(1 for p in self.generation.pieces if p.kind == "tool_args")
        return len(self.generation.tool_calls) if total == natural and natural else 0

    def _arguments(self, index: int) -> str:
        text = json.dumps(self.generation.tool_calls[index].arguments, ensure_ascii=False)
        return text[:-1] if self.broken_args else text

    def finish_reason(self) -> str:
        if self.hit_limit:
            return "length"
        if self.parse_tools and self._completed_calls():
            return "tool_calls"
        return "stop"

    def usage(self) -> dict[str, Any]:
        usage: dict[str, Any] = {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": len(self.pieces),
            "total_tokens": self.prompt_tokens + len(self.pieces),
        }
        if self.d.kind == "sglang":
            usage["prompt_tokens_details"] = None
            usage["reasoning_tokens"] = (
                sum(1 for p in self.pieces if p.kind == "reasoning") if self.split_reasoning else 0
            )
        return usage

    # -------------------------------------------------------------- non-streaming

    def response(self) -> dict[str, Any]:
        if not self.chat:
            text = "".join(p.raw_text for p in self.pieces)
            return {
                "id": self.id,
                "object": "text_completion",
                "created": self.created,
                "model": self.model,
                "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": self.finish_reason()}],
                "usage": self.usage(),
            }
        fields: dict[str, list[str]] = {"reasoning": [], "content": []}
        for piece in self.pieces:
            channel, text = self._channels(piece)
            if channel in fields:
                fields[channel].append(text)
        reasoning = "".join(fields["reasoning"]) or None
        content = "".join(fields["content"]) or None
        calls = []
        if self.parse_tools:
            for i in range(self._completed_calls()):
                call: dict[str, Any] = {
                    "id": self.call_ids[i],
                    "type": "function",
                    "function": {"name": self.generation.tool_calls[i].name, "arguments": self._arguments(i)},
                }
                if self.d.kind != "vllm":
                    call["index"] = i
                calls.append(call)
        message: dict[str, Any] = {"role": "assistant", "content": content}
        if self.d.kind == "sglang":
            message["reasoning_content"] = reasoning
            message["tool_calls"] = calls or None
        elif self.d.kind == "vllm":
            message.update(refusal=None, annotations=None, audio=None, function_call=None)
            if calls:
                message["tool_calls"] = calls
            message["reasoning"] = reasoning
            if self.d.reasoning_copy:
                message["reasoning_content"] = reasoning
        else:
            message["reasoning"] = reasoning or ""
            message["reasoning_content"] = None
            message["tool_calls"] = calls or None
        choice: dict[str, Any] = {
            "index": 0,
            "message": message,
            "logprobs": None,
            "finish_reason": self.finish_reason(),
        }
        if self.d.kind == "sglang":
            choice["matched_stop"] = None if self.hit_limit else _EOS_ID
        return {
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "choices": [choice],
            "usage": self.usage(),
        }

    # -------------------------------------------------------------- streaming

    def _chunk(self, delta: dict[str, Any] | None, finish: str | None = None) -> bytes:
        if not self.chat:
            choice: dict[str, Any] = {"index": 0, "text": (delta or {}).get("content", ""), "logprobs": None}
            choice["finish_reason"] = finish
            obj = {"id": self.id, "object": "text_completion", "created": self.created, "model": self.model}
            obj["choices"] = [choice]
            return _sse(obj)
        if self.d.explicit_nulls:
            full = {"role": None, "content": None, "reasoning_content": None, "tool_calls": None}
            full.update(delta or {})
            delta = full
        choice = {"index": 0, "delta": delta or {}, "logprobs": None, "finish_reason": finish}
        if self.d.kind == "sglang":
            choice["matched_stop"] = None if finish in (None, "length") else _EOS_ID
        obj = {"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model}
        obj["choices"] = [choice]
        if self.d.explicit_nulls:
            obj["usage"] = None
        return _sse(obj)

    def _reasoning_delta(self, text: str) -> dict[str, Any]:
        delta = {self.d.reasoning_field: text}
        if self.d.reasoning_copy:
            delta["reasoning_content"] = text
        return delta

    def stream_events(self) -> Iterator[bytes]:
        """SSE events interleaved with ``TOKEN_TICK`` markers, one marker per generated token."""
        if self.chat:
            yield self._chunk({"role": "assistant", "content": ""})
        held_reasoning: list[str] = []
        held_args: dict[int, list[str]] = {}
        arg_pieces = [i for i, p in enumerate(self.pieces) if p.kind == "tool_args"]
        last_arg = arg_pieces[-1] if arg_pieces and self._completed_calls() else -1
        for index, piece in enumerate(self.pieces):
            yield TOKEN_TICK
            channel, text = self._channels(piece)
            if channel == "reasoning":
                if self.d.stream_reasoning:
                    yield self._chunk(self._reasoning_delta(text))
                else:
                    held_reasoning.append(text)
            elif channel == "think_end":
                if held_reasoning:
                    yield self._chunk(self._reasoning_delta("".join(held_reasoning)))
                    held_reasoning.clear()
            elif channel == "content":
                if text:
                    yield self._chunk({"content": text})
            elif channel == "tool_name" and self.d.incremental_tool_args:
                call = piece.call
                yield self._chunk(
                    {
                        "tool_calls": [
                            {
                                "index": call,
                                "id": self.call_ids[call],
                                "type": "function",
                                "function": {"name": piece.text, "arguments": ""},
                            }
                        ]
                    }
                )
            elif channel == "tool_args":
                if self.broken_args and index == last_arg:
                    text = text[:-1] if text.endswith("}") else text
                if self.d.incremental_tool_args:
                    if text:
                        yield self._chunk({"tool_calls": [{"index": piece.call, "function": {"arguments": text}}]})
                else:
                    held_args.setdefault(piece.call, []).append(text)
                    if index == last_arg:
                        for call, parts in held_args.items():
                            yield self._chunk(
                                {
                                    "tool_calls": [
                                        {
                                            "index": call,
                                            "id": self.call_ids[call],
                                            "type": "function",
                                            "function": {
                                                "name": self.generation.tool_calls[call].name,
                                                "arguments": "".join(parts),
                                            },
                                        }
                                    ]
                                }
                            )
        if held_reasoning:
            yield self._chunk(self._reasoning_delta("".join(held_reasoning)))
        yield self._chunk({} if not self.d.explicit_nulls else None, self.finish_reason())
        options = self.request.get("stream_options") or {}
        # vLLM 0.15's StreamOptions.include_usage defaults to true once the object is sent (engines.md §3.6).
        default = self.d.kind == "vllm" and self.app.cfg.version < (0, 16) and "stream_options" in self.request
        if self.d.always_usage or (isinstance(options, dict) and options.get("include_usage", default)):
            obj: dict[str, Any] = {
                "id": self.id,
                "object": "chat.completion.chunk" if self.chat else "text_completion",
                "created": self.created,
                "model": self.model,
                "choices": [],
                "usage": self.usage(),
            }
            yield _sse(obj)


def raise_too_long(context: int, prompt: int, max_tokens: int) -> None:
    raise RequestError(
        400,
        f"This model's maximum context length is {context} tokens. However, you requested "
        f"{prompt + max_tokens} tokens ({prompt} in the messages, {max_tokens} in the completion).",
    )


def status_phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return ""
