"""Smoke checks: named, timed probes of an OpenAI-compatible endpoint (issue 5 §1).

Each check sends a few plain OpenAI requests and reports ``passed``, ``failed`` or ``skipped`` with
a one-line reason. ``timeout`` is each check's whole budget: connecting (at most
``CONNECT_TIMEOUT_S``), waiting and reading, over all its requests; at the deadline the connection is
cut, so a server that accepts and never answers, or trickles, costs one budget, not minutes.

A wrong target stops the run: when a check cannot connect, or the server has not answered anything
within a budget, before the server has answered anything in this run, the report says
``unreachable``; when neither the health path nor ``/v1/models`` exists (404), ``not_openai``. The
checks after it are reported as not run.

A server that answered and then stops accepting connections (an engine that died mid-run, a host that
went away) is not a wrong target but a failed check: the report says ``connection_lost``, and the
checks after it are reported as not run, so they do not each wait out a connect timeout.

Nothing here assumes more than the OpenAI chat completions API plus the GLM extras the engines
document (shared/reference/engines.md): the reasoning field under either name (``reasoning_content``
or ``reasoning``), ``chat_template_kwargs.enable_thinking``, and, only when the engine is known,
``ignore_eos``. Every network or protocol failure becomes a failed check with its reason; a check
never raises.

The checks, in order:

- ``health``: the engine's health path (for an unknown server ``/health``, else ``/v1/models``).
  ``/v1/models`` answering is not readiness: SGLang serves it during warmup while ``/health`` is 503.
- ``auth``: no key and a wrong key are refused (401/403) on ``/v1/models`` and chat completions.
- ``models``: ``/v1/models`` lists the model (or, none given, the first one is used from then on).
- ``chat``: a completion with content, usage and a valid finish reason.
- ``stream``: SSE that arrives incrementally, ends with ``[DONE]`` and carries the usage chunk.
- ``reasoning``: thinking on → reasoning separated from content; thinking off → none.
- ``tools``: a ``get_weather`` call with JSON arguments matching the schema, plain and streamed.
- ``max_tokens``: the limit holds and the finish reason is ``length``.

``up`` calls ``smoke_endpoint(...)`` and then ``report.raise_for_failure()``.
"""

from __future__ import annotations

import json
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit

import httpx
from pydantic import BaseModel, Field

from glmdeploy.engines.kinds import ENGINE_KINDS as KNOWN_ENGINE_KINDS
from glmdeploy.errors import SmokeFailed, UsageError
from glmdeploy.sse import ChatStreamAssembly, SSEParser, StreamFormatError, ToolCallDraft, reasoning_text
from glmdeploy.urls import check_port

if TYPE_CHECKING:
    from glmdeploy.junit import Suite
    from glmdeploy.profiles.model import Profile
    from glmdeploy.state import Deployment
    from glmdeploy.tls import EndpointTrust

JUNIT_SUITE = "glmdeploy.smoke"
CHECK_NAMES: tuple[str, ...] = ("health", "auth", "models", "chat", "stream", "reasoning", "tools", "max_tokens")
ENGINE_KINDS = KNOWN_ENGINE_KINDS  # engines/kinds.py: the one list
DEFAULT_TIMEOUT_S = 120.0
CONNECT_TIMEOUT_S = 10.0
# SGLang's /health runs a generation and may take up to its own 20 s timeout to answer (engines.md §5 tip b):
# a --timeout below this may fail a healthy SGLang's health check. It is honoured all the same.
SGLANG_HEALTH_TIMEOUT_S = 25.0
# A stream whose first and last chunks arrive closer than this came in one piece (a buffering proxy):
# at least 1 ms, and 0.1 ms per chunk, i.e. 10,000 chunks/s, far above any engine's single-stream decode
# (a few hundred tokens/s), yet far below a buffered body that lands in one burst.
MIN_STREAM_GAP_S = 0.001
MIN_CHUNK_GAP_S = 0.0001
MAX_TOKENS_LIMIT = 16
# What a hostile or broken endpoint may send before the check gives up on it.
MAX_BODY_BYTES = 8 << 20
MIN_MASKED_KEY = 8  # shorter keys are not masked in reports (see _Runner._maskable_key)
MAX_STREAM_BYTES = 64 << 20
VALID_FINISH = frozenset({"stop", "length", "tool_calls"})

WEATHER_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather for a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "description": "City name, e.g. Paris"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city"],
        },
    },
}
WEATHER_PROMPT = "What's the weather in Paris right now? Use the get_weather tool."
THINKING_OFF = {"enable_thinking": False}
THINKING_ON = {"enable_thinking": True}

Status = Literal["passed", "failed", "skipped"]


class CheckResult(BaseModel):
    """One check's outcome. A skipped check counts as passed: it did not find a problem."""

    name: str
    passed: bool
    status: Status
    duration_ms: float
    detail: str
    ttft_ms: float | None = None
    info: dict[str, Any] = Field(default_factory=dict, description="What the check saw (model, tool call, ...).")


class SmokeReport(BaseModel):
    passed: bool
    target: str = Field(description="Base URL (never holds a key).")
    engine: str | None = None
    model: str | None = None
    checks: list[CheckResult]
    unreachable: str | None = Field(default=None, description="Why the target could not be reached, if so.")
    not_openai: str | None = Field(default=None, description="Why the target is not an OpenAI-compatible server.")
    connection_lost: str | None = Field(
        default=None, description="Which check could no longer connect after the server had answered, and why."
    )

    def failed(self) -> list[CheckResult]:
        return [c for c in self.checks if c.status == "failed"]

    def summary(self) -> str:
        bad = self.failed()
        if not bad:
            ran = sum(c.status == "passed" for c in self.checks)
            return f"smoke checks passed ({ran} passed, {len(self.checks) - ran} skipped)"
        return "smoke checks failed: " + "; ".join(f"{c.name}: {c.detail}" for c in bad)

    def raise_for_failure(self) -> None:
        if not self.passed:
            raise SmokeFailed(self.summary())

    def junit_suite(self) -> Suite:
        """The report as the JUnit suite ``glmdeploy.smoke``, one test case per check."""
        from glmdeploy.junit import Case, Suite

        cases = [
            Case(
                name=c.name,
                classname=JUNIT_SUITE,
                time_s=c.duration_ms / 1000,
                status=c.status,
                message=c.detail,
                output=f"{c.name}: {c.status}: {c.detail}",
            )
            for c in self.checks
        ]
        properties = {"target": self.target, "engine": self.engine or "unknown", "model": self.model or "unknown"}
        return Suite(name=JUNIT_SUITE, cases=cases, properties=properties)

    def to_json(self) -> dict[str, Any]:
        data = self.model_dump(mode="json")
        for verdict in ("unreachable", "not_openai", "connection_lost"):
            if data[verdict] is None:
                del data[verdict]
        for check in data["checks"]:
            if check["ttft_ms"] is None:
                del check["ttft_ms"]
        return data


@dataclass(frozen=True)
class Target:
    """What to smoke: where, with which key and model, and what the deployment's profile enables."""

    api_base: str
    api_key: str | None = field(default=None, repr=False)
    model: str | None = None
    engine: str | None = None
    # Checks the profile rules out, with the reason (a profile without a reasoning parser, ...).
    profile_skips: Mapping[str, str] = field(default_factory=dict)
    label: str | None = None
    # How the endpoint's TLS is trusted: a deployment's pin, or --pin/--ca-cert (glmdeploy.tls).
    trust: EndpointTrust | None = None

    @property
    def root(self) -> str:
        return self.api_base.removesuffix("/v1")

    @classmethod
    def from_url(
        cls, url: str, *, api_key: str | None = None, model: str | None = None, engine: str | None = None,
        trust: EndpointTrust | None = None,
    ) -> Target:
        """``url`` may be the base URL ending in ``/v1`` or the server root."""
        from glmdeploy.vast.keys import sendable

        if api_key and not sendable(api_key):
            # httpx's refusal would quote the header, key included, in every check's detail.
            raise UsageError(
                "the endpoint API key contains a space, a line break, a control or a non-ASCII character, "
                "so it cannot be sent; a key is one line of printable ASCII"
            )
        return cls(api_base=normalise_base_url(url), api_key=api_key or None, model=model or None,
                   engine=_engine_kind(engine), trust=trust)

    @classmethod
    def from_profile(
        cls,
        endpoint: str,
        api_key: str | None,
        *,
        model: str | None,
        profile: Profile | Mapping[str, Any] | None,
        label: str | None = None,
    ) -> Target:
        snapshot: Mapping[str, Any] = {}
        if profile is not None:
            snapshot = profile if isinstance(profile, Mapping) else profile.model_dump(mode="json")
        engine_spec = snapshot.get("engine") or {}
        kind = engine_spec.get("kind") if isinstance(engine_spec, Mapping) else None
        return cls(
            api_base=normalise_base_url(endpoint),
            api_key=api_key or None,
            model=model or None,
            engine=kind if kind in ENGINE_KINDS else None,
            profile_skips=profile_skips(snapshot),
            label=label,
        )

    @classmethod
    def from_deployment(cls, deployment: Deployment) -> Target:
        if not deployment.endpoint:
            raise UsageError(f"deployment {deployment.name!r} has no endpoint (status {deployment.status})")
        from dataclasses import replace

        from glmdeploy.tls import EndpointTrust

        target = cls.from_profile(
            deployment.endpoint,
            deployment.endpoint_key(),
            model=deployment.model,
            profile=deployment.profile_snapshot,
            label=deployment.name,
        )
        trust = EndpointTrust(fingerprint=deployment.tls_fingerprint, certificate_pem=deployment.tls_certificate)
        return replace(target, trust=trust)


def normalise_base_url(url: str) -> str:
    text = url.strip().rstrip("/")
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise UsageError(f"not an http(s) URL: {url!r} (give the server root or its base URL ending in /v1)")
    check_port(text, option="--url")
    if parts.query or parts.fragment:
        # Not repeated whole: a query is where a key would sit (?api_key=...).
        bare = f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}{parts.path}"
        raise UsageError(f"the URL must not carry a query or fragment: {bare!r} + '?...'/'#...'")
    if parts.username or parts.password:
        raise UsageError("the URL must not hold credentials; pass the key with --api-key")
    return text if text.endswith("/v1") else text + "/v1"


def _engine_kind(engine: str | None) -> str | None:
    if engine is None:
        return None
    if engine not in ENGINE_KINDS:
        raise UsageError(f"unknown engine {engine!r}: choose one of {', '.join(ENGINE_KINDS)}")
    return engine


def profile_skips(snapshot: Mapping[str, Any]) -> dict[str, str]:
    """Checks a profile rules out: without a parser the engine cannot pass them, by design."""
    engine = snapshot.get("engine")
    if not isinstance(engine, Mapping):
        return {}
    name = snapshot.get("name") or "the profile"
    extra = " ".join(str(a) for a in engine.get("extra_args") or []).replace("_", "-")
    kind = engine.get("kind")
    skips: dict[str, str] = {}
    if not engine.get("reasoning_parser") and "--reasoning-parser" not in extra:
        skips["reasoning"] = f"profile {name} enables no reasoning parser: thinking arrives inline in content"
    has_tool_parser = bool(engine.get("tool_call_parser")) or "--tool-call-parser" in extra
    if not has_tool_parser:
        skips["tools"] = f"profile {name} enables no tool-call parser: tool calls arrive as raw text"
    elif (switch := _auto_tool_choice_flag(kind)) and not engine.get("auto_tool_choice") and switch not in extra:
        skips["tools"] = f"profile {name} does not set auto_tool_choice: {_display(kind)} refuses tool_choice auto"
    return skips


def _auto_tool_choice_flag(kind: object) -> str | None:
    if kind not in ENGINE_KINDS:
        return None
    from glmdeploy.engines import get_engine

    return get_engine(str(kind)).auto_tool_choice_flag


def _display(kind: object) -> str:
    from glmdeploy.engines import get_engine

    return get_engine(str(kind)).display_name


def select_checks(only: Sequence[str] = (), skip: Sequence[str] = ()) -> list[str]:
    """The checks to run, in their fixed order. Unknown names are a usage error."""
    unknown = [n for n in (*only, *skip) if n not in CHECK_NAMES]
    if unknown:
        raise UsageError(f"unknown check {unknown[0]!r}: choose from {', '.join(CHECK_NAMES)}")
    chosen = [n for n in CHECK_NAMES if (not only or n in only) and n not in skip]
    if not chosen:
        raise UsageError("--only and --skip leave no check to run")
    return chosen


# ------------------------------------------------------------------------------------- running


class _Fail(Exception):
    """A check found a problem; the message is its one-line detail."""


class _Skip(Exception):
    """A check does not apply; the message says why."""


class _NotOpenAI(_Fail):
    """The target answers HTTP, but neither its health path nor /v1/models exists: the wrong server."""


@dataclass
class _Outcome:
    detail: str
    ttft_ms: float | None = None
    info: dict[str, Any] = field(default_factory=dict)


def smoke_endpoint(
    endpoint: str,
    api_key: str | None,
    *,
    model: str | None,
    profile: Profile | Mapping[str, Any] | None = None,
    only: Sequence[str] = (),
    skip: Sequence[str] = (),
    timeout: float = DEFAULT_TIMEOUT_S,
    on_start: Callable[[str], None] | None = None,
    on_result: Callable[[CheckResult], None] | None = None,
    http: httpx.Client | None = None,
    trust: EndpointTrust | None = None,
) -> SmokeReport:
    """Smoke a deployment's endpoint the way ``up`` does before it reports ready."""
    from dataclasses import replace

    target = replace(Target.from_profile(endpoint, api_key, model=model, profile=profile), trust=trust)
    return run_smoke(target, only=only, skip=skip, timeout=timeout, on_start=on_start, on_result=on_result, http=http)


def run_smoke(
    target: Target,
    *,
    only: Sequence[str] = (),
    skip: Sequence[str] = (),
    timeout: float = DEFAULT_TIMEOUT_S,
    on_start: Callable[[str], None] | None = None,
    on_result: Callable[[CheckResult], None] | None = None,
    http: httpx.Client | None = None,
) -> SmokeReport:
    """Run the selected checks in order; ``timeout`` bounds each request (seconds)."""
    names = select_checks(only, skip)
    if timeout <= 0:
        raise UsageError("--timeout must be positive")
    runner = _Runner(target, timeout=timeout, http=http)
    results: list[CheckResult] = []
    try:
        for name in names:
            if on_start is not None:
                on_start(name)
            result = runner.run(name)
            results.append(result)
            if on_result is not None:
                on_result(result)
    finally:
        runner.close()
    return SmokeReport(
        passed=all(r.passed for r in results),
        target=target.api_base,
        engine=target.engine,
        model=runner.model_id or target.model,
        checks=results,
        unreachable=runner.unreachable,
        not_openai=runner.not_openai,
        connection_lost=runner.connection_lost,
    )


class _Runner:
    def __init__(self, target: Target, *, timeout: float, http: httpx.Client | None) -> None:
        self.target = target
        self.timeout = timeout
        host = urlsplit(target.api_base).hostname or ""
        self._own_http = http is None
        # A proxy from the environment must not stand between us and a local server. A pinned endpoint is
        # checked with one handshake first (CertificateMismatch, exit 9, before anything is sent).
        verify = target.trust.context(target.api_base) if http is None and target.trust is not None else True
        self.http = http or httpx.Client(
            trust_env=host not in ("127.0.0.1", "localhost", "::1") and target.trust is None,
            follow_redirects=False, verify=verify,
        )
        self.model_id: str | None = target.model
        # Set once a check could not even connect, or got no answer at all: the later checks fail at once
        # instead of each waiting out its own budget (a firewalled or hung host would cost minutes).
        self.unreachable: str | None = None
        # Set when the target is not an OpenAI-compatible server at all (a plain web server's 404s).
        self.not_openai: str | None = None
        # Set when a connection fails after the server had answered: a failed check, not a wrong target.
        self.connection_lost: str | None = None
        self.answered = False  # whether the server has sent any HTTP answer yet
        self.deadline = 0.0  # the running check's: perf_counter() time

    def close(self) -> None:
        if self._own_http:
            self.http.close()

    def run(self, name: str) -> CheckResult:
        started = time.perf_counter()
        self.deadline = started + self.timeout
        status: Status
        ttft: float | None = None
        info: dict[str, Any] = {}
        try:
            reason = self.target.profile_skips.get(name)
            if reason is not None:
                raise _Skip(reason)
            if self.unreachable is not None:
                raise _Fail(f"not run: {self.unreachable}")
            if self.not_openai is not None:
                raise _Fail(f"not run: {self.not_openai}")
            if self.connection_lost is not None:
                raise _Fail(f"not run: {self.connection_lost}")
            outcome: _Outcome = getattr(self, f"check_{name}")()
            status, detail, ttft, info = "passed", outcome.detail, outcome.ttft_ms, outcome.info
        except _Skip as exc:
            status, detail = "skipped", str(exc)
        except _NotOpenAI as exc:
            status, detail = "failed", str(exc)
            self.not_openai = detail
        except _Fail as exc:
            status, detail = "failed", str(exc)
        except Exception as exc:  # a check reports, it never crashes the run
            status, detail = "failed", describe_error(exc)
            if isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout)) and self.answered:
                self.connection_lost = f"{name} could not connect after the server had answered ({detail})"
            elif isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout)):
                self.unreachable = f"{name} could not connect ({detail})"
            elif isinstance(exc, httpx.TimeoutException) and not self.answered:
                self.unreachable = (
                    f"{name} got no answer in {self.timeout:g} s: the server accepts connections but does not "
                    f"respond ({detail})"
                )
        if status == "failed" and not detail.startswith("not run: "):
            stopped = "unreachable" if self.unreachable else "not_openai" if self.not_openai else None
            if stopped:
                info = {**info, "stopped": stopped}  # this check found the target wrong; the rest are not run
        duration = (time.perf_counter() - started) * 1000
        key = self._maskable_key()
        if key:  # streamed text is not masked as it arrives: mask what is reported
            detail = detail.replace(key, "[redacted]")
        return CheckResult(
            name=name, passed=status != "failed", status=status, duration_ms=round(duration, 1),
            detail=_one_line(detail), ttft_ms=ttft, info=info,
        )

    # ---------------------------------------------------------------------------- HTTP helpers

    def _headers(self, auth: Literal["key", "none", "wrong"]) -> dict[str, str]:
        if auth == "key" and self.target.api_key:
            return {"Authorization": f"Bearer {self.target.api_key}"}
        if auth == "wrong":
            return {"Authorization": f"Bearer wrong-{secrets.token_hex(8)}"}
        return {}

    def _masked(self, body: bytes) -> bytes:
        """The body with our key masked: an endpoint (or a proxy) that echoes the Authorization header
        must not put the key into details, model names or a JUnit report. Masked before anything is
        clipped, so no prefix of the key survives either."""
        key = self._maskable_key()
        return body.replace(key.encode(), b"[redacted]") if key else body

    def _maskable_key(self) -> str | None:
        # A toy key ("k", as tests use) would mask every such letter; real keys are long.
        key = self.target.api_key
        return key if key and len(key) >= MIN_MASKED_KEY else None

    def _timeout(self) -> httpx.Timeout:
        """What is left of the check's budget, for connecting, writing and each read."""
        left = self.deadline - time.perf_counter()
        if left <= 0:
            raise _Fail(f"out of time: the check's {self.timeout:g} s are used up")
        return httpx.Timeout(left, connect=min(CONNECT_TIMEOUT_S, left))

    @contextmanager
    def _cut_at_deadline(self, response: httpx.Response) -> Iterator[None]:
        """Close the connection under a read at the check's deadline.

        httpx's read timeout bounds each read, not the whole answer: a server sending a byte every few
        seconds would keep a check going for ever. The socket comes from httpx's documented
        ``network_stream`` response extension; shutting it down ends the read at once.
        """
        self.answered = True
        stream = response.extensions.get("network_stream")
        sock = stream.get_extra_info("socket") if stream is not None else None
        if sock is None:
            yield
            return
        timer = threading.Timer(max(0.0, self.deadline - time.perf_counter()), _shutdown, args=(sock,))
        timer.daemon = True
        timer.start()
        try:
            yield
        finally:
            timer.cancel()

    def _past_deadline(self) -> bool:
        return time.perf_counter() >= self.deadline

    def get(self, url: str, auth: Literal["key", "none", "wrong"] = "key") -> _Answer:
        return self._send("GET", url, auth=auth)

    def post_chat(self, body: dict[str, Any], auth: Literal["key", "none", "wrong"] = "key") -> _Answer:
        return self._send("POST", self.target.api_base + "/chat/completions", auth=auth, body=body)

    def _send(
        self, method: str, url: str, *, auth: Literal["key", "none", "wrong"], body: dict[str, Any] | None = None,
    ) -> _Answer:
        with self.http.stream(
            method, url, json=body, headers=self._headers(auth), timeout=self._timeout()
        ) as response, self._cut_at_deadline(response):
            content = _read_capped(response, f"{method} {urlsplit(url).path}", self.deadline, self.timeout)
            return _Answer(response.status_code, self._masked(content), response.headers)

    @contextmanager
    def stream_chat(self, body: dict[str, Any]) -> Iterator[httpx.Response]:
        with self.http.stream(
            "POST", self.target.api_base + "/chat/completions", json={**body, "stream": True},
            headers=self._headers("key"), timeout=self._timeout(),
        ) as response, self._cut_at_deadline(response):
            yield response

    def model(self) -> str:
        """The model to ask for: the given one, else the first /v1/models lists."""
        if self.model_id is None:
            response = self.get(self.target.api_base + "/models")
            if response.status_code != 200:
                raise _Fail(f"no model given and GET /v1/models answered {_status(response)}")
            ids = _model_ids(_json_body(response, "GET /v1/models"))
            if not ids:
                raise _Fail("no model given and GET /v1/models lists none")
            self.model_id = ids[0]
        return self.model_id

    def chat(self, what: str, **body: Any) -> dict[str, Any]:
        """A non-streaming completion's first choice (with ``usage`` and ``model`` copied in)."""
        response = self.post_chat({"model": self.model(), **body})
        if response.status_code != 200:
            raise _Fail(f"{what}: HTTP {_status(response)}")
        data = _json_body(response, what)
        choices = data.get("choices")
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            raise _Fail(f"{what}: the answer has no choices")
        choice: dict[str, Any] = dict(choices[0])
        message = choice.get("message")
        if not isinstance(message, dict):
            raise _Fail(f"{what}: the first choice has no message")
        choice["usage"] = data.get("usage")
        choice["model"] = data.get("model")
        return choice

    def stream(self, what: str, body: dict[str, Any]) -> tuple[ChatStreamAssembly, float, int]:
        """Stream a completion; returns the assembly, the start time and how many reads brought events."""
        parser = SSEParser()
        assembly = ChatStreamAssembly()
        reads_with_events = 0
        request = {"model": self.model(), **body}  # looked up first: the lookup is not time to first token
        started = time.perf_counter()
        with self.stream_chat(request) as response:
            deadline = self.deadline
            content_type = response.headers.get("content-type", "")
            if response.status_code != 200 or content_type.startswith("application/json"):
                answer = _Answer(
                    response.status_code,
                    self._masked(_read_capped(response, what, deadline, self.timeout)),
                    response.headers,
                )
                if response.status_code != 200:
                    raise _Fail(f"{what}: HTTP {_status(answer)}")
                raise _Fail(f"{what}: the server answered JSON, not an event stream: {_status(answer)}")
            try:
                for raw in response.iter_bytes():
                    now = time.perf_counter()
                    if parser.bytes_seen + len(raw) > MAX_STREAM_BYTES:
                        raise _Fail(f"{what}: the stream exceeds {MAX_STREAM_BYTES >> 20} MiB")
                    events = parser.feed(raw, now)
                    if events:
                        reads_with_events += 1
                    for event in events:
                        assembly.add_event(event)
                    if assembly.done:
                        break  # whatever a server sends after [DONE] is not the answer
                    if now > deadline:
                        raise _Fail(f"{what}: the stream was still going after {self.timeout:g} s")
            except httpx.TransportError as exc:
                if self._past_deadline():  # cut by _cut_at_deadline
                    raise _Fail(f"{what}: the stream was still going after {self.timeout:g} s") from None
                raise _Fail(
                    f"{what}: the connection broke mid-stream after {assembly.chunks} chunks "
                    f"({describe_error(exc)})"
                ) from None
            except StreamFormatError as exc:
                raise _Fail(f"{what}: {exc}") from None
            cut = parser.unterminated
            try:
                for event in parser.close():
                    assembly.add_event(event)
            except StreamFormatError as exc:
                raise _Fail(f"{what}: the stream ended mid-event: {exc}") from None
            if cut and not assembly.done:
                raise _Fail(f"{what}: the stream ended mid-event after {assembly.chunks} chunks")
        return assembly, started, reads_with_events

    # ------------------------------------------------------------------------------ the checks

    def check_health(self) -> _Outcome:
        # The health rule (path, read timeout, what a code means) is the engine's (engines/health.py);
        # this check keeps its own guarded transport (body limits, masking) for hostile servers.
        from glmdeploy.engines import get_engine
        from glmdeploy.engines.health import HealthState

        engine = self.target.engine
        rule = get_engine(engine) if engine is not None else None
        path = rule.health_path if rule is not None else "/health"
        # The check's whole budget is --timeout (connect, wait and read), SGLang's generating /health
        # included: a longer engine default here was how `health` came to ignore --timeout.
        response = self.get(self.target.root + path)
        code = response.status_code
        if code == 200:
            return _Outcome(f"GET {path}: 200", info={"path": path})
        if code == 503 or (rule is not None and rule.read_health(code) is HealthState.STARTING):
            models = self._models_status()
            also = f"; /v1/models answers {models}" if models is not None else ""
            raise _Fail(f"GET {path}: {code}, the server is not ready (still warming up?){also}")
        if code in (404, 405):
            models_response = self.get(self.target.api_base + "/models")
            if models_response.status_code == 404:
                raise _NotOpenAI(
                    f"not an OpenAI-compatible server: GET {path} answered {code} and GET /v1/models 404"
                )
            if engine is None and models_response.status_code == 200:
                return _Outcome(f"no {path} ({code}); GET /v1/models: 200", info={"path": "/v1/models"})
            if engine is None:
                raise _Fail(f"no {path} ({code}) and GET /v1/models answered {_status(models_response)}")
        raise _Fail(f"GET {path}: HTTP {_status(response)}")

    def _models_status(self) -> int | None:
        try:
            return self.get(self.target.api_base + "/models").status_code
        except httpx.HTTPError:
            return None

    def check_auth(self) -> _Outcome:
        if not self.target.api_key:
            raise _Skip("warning: no API key configured, so the endpoint's auth was not checked")
        body = {
            "model": self.model_id or "default",
            "messages": [{"role": "user", "content": "Hi"}],
            "max_tokens": 1,
        }
        let_in: list[str] = []
        missing: list[str] = []
        odd: list[str] = []
        seen: set[int] = set()
        modes: tuple[tuple[Literal["none", "wrong"], str], ...] = (
            ("none", "without a key"),
            ("wrong", "with a wrong key"),
        )
        for auth, how in modes:
            for what in ("GET /v1/models", "POST /v1/chat/completions"):
                if what.startswith("GET"):
                    code = self.get(self.target.api_base + "/models", auth=auth).status_code
                else:
                    code = self.post_chat(body, auth=auth).status_code
                seen.add(code)
                if 200 <= code < 300:  # only an answer is a way in; a 404 or a 500 lets nobody in
                    let_in.append(f"{what} {how}: {code}")
                elif code == 404:
                    missing.append(f"{what} {how}: 404")
                elif code not in (401, 403):
                    odd.append(f"{what} {how}: {code}")
        if let_in:
            raise _Fail("the key is not enforced: " + "; ".join(let_in))
        if missing:
            raise _Fail("not an OpenAI-compatible endpoint: " + "; ".join(missing))
        if odd:
            raise _Fail("expected 401 or 403 without a valid key: " + "; ".join(odd))
        codes = "/".join(str(c) for c in sorted(seen))
        return _Outcome(f"{codes} without a key and with a wrong key on /v1/models and /v1/chat/completions")

    def check_models(self) -> _Outcome:
        response = self.get(self.target.api_base + "/models")
        if response.status_code == 404:
            raise _Fail("GET /v1/models: 404: not an OpenAI-compatible server")
        if response.status_code != 200:
            raise _Fail(f"GET /v1/models: HTTP {_status(response)}")
        ids = _model_ids(_json_body(response, "GET /v1/models"))
        if not ids:
            raise _Fail("GET /v1/models lists no model")
        info: dict[str, Any] = {"models": ids}
        if self.target.model is not None:
            if self.target.model not in ids:
                raise _Fail(f"{self.target.model!r} is not listed; /v1/models lists {', '.join(ids)}")
            info["model"] = self.target.model
            return _Outcome(f"lists {self.target.model}", info=info)
        self.model_id = ids[0]
        info["model"] = ids[0]
        return _Outcome(f"lists {', '.join(ids)}; using {ids[0]} (no model given)", info=info)

    def check_chat(self) -> _Outcome:
        choice = self.chat(
            "chat completion",
            messages=[{"role": "user", "content": "Say hello in five words."}],
            max_tokens=256,
            chat_template_kwargs=THINKING_OFF,
        )
        message = choice["message"]
        content = message.get("content") if isinstance(message.get("content"), str) else ""
        reasoning = reasoning_text(message)
        if not (content or "").strip() and not reasoning.strip():
            raise _Fail(f"empty answer: no content and no reasoning (finish_reason {choice.get('finish_reason')})")
        finish = choice.get("finish_reason")
        if finish not in VALID_FINISH:
            raise _Fail(f"finish_reason {finish!r} is not one of stop, length, tool_calls")
        usage = _usage(choice.get("usage"))
        text = (content or "").strip() or reasoning.strip()
        return _Outcome(
            f"{usage['completion_tokens']} tokens, finish_reason {finish}: {_clip(text, 60)!r}",
            info={"model": choice.get("model"), "finish_reason": finish, "usage": usage, "content": content},
        )

    def check_stream(self) -> _Outcome:
        body = {
            "messages": [{"role": "user", "content": "Count from one to twenty in words."}],
            "max_tokens": 128,
            "chat_template_kwargs": THINKING_OFF,
            "stream_options": {"include_usage": True},
        }
        assembly, started, reads = self.stream("streamed completion", body)
        if reads < 2 and assembly.done:
            # One read for the whole stream can also mean this client was descheduled while the server
            # streamed (a loaded CI runner): look once more before blaming the server.
            assembly, started, reads = self.stream("streamed completion (second look)", body)
        n = assembly.chunks
        if n == 0:
            raise _Fail("the stream held no chunk" + ("" if assembly.done else " and no [DONE]"))
        if not assembly.content and not assembly.reasoning:
            raise _Fail(f"{n} chunks but no content or reasoning")
        if not assembly.done:
            raise _Fail(f"the stream ended without data: [DONE] after {n} chunks")
        if assembly.usage is None:
            raise _Fail(f"no usage chunk although stream_options.include_usage was sent ({n} chunks)")
        usage = _usage(assembly.usage)
        first = assembly.first_chunk_at or started
        last = assembly.last_chunk_at or started
        gap_ms = (last - first) * 1000
        needed = max(MIN_STREAM_GAP_S, MIN_CHUNK_GAP_S * (n - 1))
        if reads < 2 or last - first < needed:
            raise _Fail(
                f"{n} chunks arrived within {gap_ms:.2f} ms (incremental needs {needed * 1000:.1f} ms or more): "
                "the stream is not incremental "
                "(buffered by a proxy?)"
            )
        ttft_ms = round(((assembly.first_token_at or first) - started) * 1000, 1)
        return _Outcome(
            f"{n} chunks over {gap_ms:.0f} ms, TTFT {ttft_ms:.0f} ms, [DONE] received, "
            f"usage {usage['prompt_tokens']}+{usage['completion_tokens']} tokens",
            ttft_ms=ttft_ms,
            info={"chunks": n, "finish_reason": assembly.finish_reason, "usage": usage},
        )

    def check_reasoning(self) -> _Outcome:
        question = [{"role": "user", "content": "What is 17 + 25? Answer with the number only."}]
        on = self.chat("thinking on", messages=question, max_tokens=2048, chat_template_kwargs=THINKING_ON)
        message = on["message"]
        content = message.get("content") if isinstance(message.get("content"), str) else ""
        if "<think>" in (content or "") or "</think>" in (content or ""):
            raise _Fail("thinking on: content holds <think>/</think>, so the reasoning is not separated from it")
        field_name = next(
            (k for k in ("reasoning_content", "reasoning") if isinstance(message.get(k), str) and message[k]), None
        )
        if field_name is None:
            raise _Fail("thinking on: no reasoning_content or reasoning in the answer")
        # Streamed, the parser splits the text as it arrives: a separate code path in every engine.
        streamed, _, _ = self.stream(
            "thinking on, streamed", {"messages": question, "max_tokens": 2048, "chat_template_kwargs": THINKING_ON}
        )
        if "<think>" in streamed.content or "</think>" in streamed.content:
            raise _Fail("thinking on, streamed: content holds <think>/</think>")
        if not streamed.reasoning:
            raise _Fail("thinking on, streamed: no reasoning_content or reasoning deltas")
        off = self.chat("thinking off", messages=question, max_tokens=256, chat_template_kwargs=THINKING_OFF)
        off_message = off["message"]
        leaked = reasoning_text(off_message)
        if leaked:
            raise _Fail(f"thinking off: reasoning still arrived ({_clip(leaked, 40)!r})")
        off_content = off_message.get("content") if isinstance(off_message.get("content"), str) else ""
        if "</think>" in (off_content or ""):
            raise _Fail("thinking off: content holds </think>")
        return _Outcome(
            f"thinking on: {len(message[field_name])} chars in {field_name}, content clean (streamed too); "
            "thinking off: no reasoning",
            info={"field": field_name, "reasoning_on": True, "reasoning_off": False,
                  "finish_reason": on.get("finish_reason")},
        )

    def check_tools(self) -> _Outcome:
        body: dict[str, Any] = {
            "messages": [{"role": "user", "content": WEATHER_PROMPT}],
            "tools": [WEATHER_TOOL],
            "tool_choice": "auto",
            "max_tokens": 1024,
            "chat_template_kwargs": THINKING_OFF,
        }
        choice = self.chat("tool call", **body)
        calls = choice["message"].get("tool_calls")
        if not isinstance(calls, list) or not calls:
            raise _Fail(
                f"no tool_calls (finish_reason {choice.get('finish_reason')!r}, "
                f"content {_clip(str(choice['message'].get('content') or ''), 60)!r})"
            )
        draft = _draft_from_message_call(calls[0])
        args = _validate_weather_call(draft, "tool call")
        if choice.get("finish_reason") != "tool_calls":
            raise _Fail(f"tool call: finish_reason {choice.get('finish_reason')!r}, expected 'tool_calls'")

        assembly, _, _ = self.stream("streamed tool call", body)
        streamed = assembly.ordered_tool_calls()
        if not streamed:
            raise _Fail(f"streamed tool call: no tool_calls deltas in {assembly.chunks} chunks")
        stream_args = _validate_weather_call(streamed[0], "streamed tool call")
        if assembly.finish_reason != "tool_calls":
            raise _Fail(f"streamed tool call: finish_reason {assembly.finish_reason!r}, expected 'tool_calls'")
        return _Outcome(
            f"get_weather({json.dumps(args)}) with finish_reason tool_calls; streamed in "
            f"{streamed[0].deltas} deltas, reassembled alike",
            info={
                "name": draft.name, "arguments": args, "id": draft.id,
                "stream_arguments": stream_args, "stream_deltas": streamed[0].deltas,
                "finish_reason": "tool_calls",
            },
        )

    def check_max_tokens(self) -> _Outcome:
        body: dict[str, Any] = {
            "messages": [{"role": "user", "content": "Write a very long story about the sea, at least 500 words."}],
            "max_tokens": MAX_TOKENS_LIMIT,
        }
        if self.target.engine is not None:
            body["ignore_eos"] = True  # all three engines accept it; an unknown server may not
        choice = self.chat("max_tokens", **body)
        usage = _usage(choice.get("usage"))
        used = usage["completion_tokens"]
        finish = choice.get("finish_reason")
        if used > MAX_TOKENS_LIMIT:
            raise _Fail(f"completion_tokens {used} > max_tokens {MAX_TOKENS_LIMIT}")
        if finish != "length":
            raise _Fail(f"finish_reason {finish!r} with max_tokens {MAX_TOKENS_LIMIT}, expected 'length'")
        return _Outcome(
            f"completion_tokens {used} <= {MAX_TOKENS_LIMIT}, finish_reason length",
            info={"completion_tokens": used, "finish_reason": finish},
        )


# ------------------------------------------------------------------------------------- helpers


@dataclass(frozen=True)
class _Answer:
    """A whole (size-capped) HTTP answer."""

    status_code: int
    content: bytes
    headers: httpx.Headers

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", errors="replace")

    def json(self) -> Any:
        return json.loads(self.content)


def _read_capped(response: httpx.Response, what: str, deadline: float, limit: float) -> bytes:
    """The body, but no more than MAX_BODY_BYTES and no later than the deadline: an endpoint may be hostile."""
    body = bytearray()
    try:
        for piece in response.iter_bytes():
            body += piece
            if len(body) > MAX_BODY_BYTES:
                raise _Fail(f"{what}: the answer exceeds {MAX_BODY_BYTES >> 20} MiB")
            if time.perf_counter() > deadline:
                raise _Fail(f"{what}: the answer was still arriving after {limit:g} s")
    except httpx.TransportError:
        if time.perf_counter() >= deadline:  # the connection was cut at the deadline
            raise _Fail(f"{what}: the answer was still arriving after {limit:g} s") from None
        raise
    return bytes(body)


def _shutdown(sock: Any) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:  # already closed
        pass


def _json_body(response: _Answer, what: str) -> dict[str, Any]:
    try:
        data = response.json()
    except (ValueError, RecursionError):
        raise _Fail(f"{what}: the body is not JSON: {_clip(response.text, 60)!r}") from None
    if not isinstance(data, dict):
        raise _Fail(f"{what}: the body is not a JSON object")
    return data


def _model_ids(data: Mapping[str, Any]) -> list[str]:
    rows = data.get("data")
    if not isinstance(rows, list):
        raise _Fail("GET /v1/models: no 'data' list in the body")
    return [row["id"] for row in rows if isinstance(row, dict) and isinstance(row.get("id"), str)]


def _usage(value: Any) -> dict[str, int]:
    if not isinstance(value, dict):
        raise _Fail("no usage in the answer")
    missing = [k for k in ("prompt_tokens", "completion_tokens", "total_tokens") if not isinstance(value.get(k), int)]
    if missing:
        raise _Fail(f"usage lacks {', '.join(missing)}")
    return {k: int(value[k]) for k in ("prompt_tokens", "completion_tokens", "total_tokens")}


def _draft_from_message_call(call: Any) -> ToolCallDraft:
    if not isinstance(call, dict) or not isinstance(call.get("function"), dict):
        raise _Fail("tool call: a tool_calls entry has no function object")
    function = call["function"]
    arguments = function.get("arguments")
    return ToolCallDraft(
        index=0,
        id=_text(call.get("id")),
        type=_text(call.get("type")),
        name=_text(function.get("name")),
        arguments=arguments if isinstance(arguments, str) else json.dumps(arguments),
        deltas=1,
    )


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _validate_weather_call(call: ToolCallDraft, what: str) -> dict[str, Any]:
    if call.name != "get_weather":
        raise _Fail(f"{what}: called {call.name!r}, expected 'get_weather'")
    if not call.id:
        raise _Fail(f"{what}: the call has no id")
    if call.type and call.type != "function":
        raise _Fail(f"{what}: type {call.type!r}, expected 'function'")
    try:
        args = json.loads(call.arguments)
    except ValueError:
        raise _Fail(f"{what}: arguments are not JSON: {_clip(call.arguments, 60)!r}") from None
    if not isinstance(args, dict):
        raise _Fail(f"{what}: arguments are not a JSON object: {_clip(call.arguments, 60)!r}")
    city = args.get("city")
    if not isinstance(city, str) or not city.strip():
        raise _Fail(f"{what}: arguments lack the required string 'city': {_clip(call.arguments, 60)!r}")
    unit = args.get("unit")
    if unit is not None and unit not in ("celsius", "fahrenheit"):
        raise _Fail(f"{what}: 'unit' {unit!r} is not in the schema's enum")
    return args


def describe_error(exc: BaseException) -> str:
    """One line for a transport or protocol failure; never a traceback, never a header."""
    text = str(exc) or type(exc).__name__
    if isinstance(exc, httpx.ConnectTimeout):
        return f"could not connect in time ({text})"
    if isinstance(exc, httpx.TimeoutException):
        return f"no answer in time ({type(exc).__name__})"
    if isinstance(exc, httpx.ConnectError):
        lowered = text.lower()
        if "ssl" in lowered or "certificate" in lowered or "tls" in lowered:
            return f"TLS error: {text}"
        return f"cannot connect: {text}"
    if isinstance(exc, httpx.RemoteProtocolError):
        return f"the server broke the HTTP exchange: {text}"
    if isinstance(exc, httpx.HTTPError):
        return f"{type(exc).__name__}: {text}"
    return f"unexpected {type(exc).__name__}: {text}"


def _status(response: _Answer) -> str:
    text = response.text
    text = " ".join(text.split())
    return f"{response.status_code} {_clip(text, 80)!r}" if text else str(response.status_code)


def _clip(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _one_line(text: str) -> str:
    return " ".join(text.split())
