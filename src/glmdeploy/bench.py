"""Load generator for an OpenAI chat endpoint, measuring the way ``vllm bench serve`` does (engines.md §9).

Three layers, so the numbers can be checked by hand and the I/O stays thin:

- **Workload** (pure): ``make_requests`` builds the random-words dataset, ``arrival_offsets`` the send schedule
  (all at t=0 for ``inf``, else gamma-distributed gaps rescaled so the last send is at ``n / rate``).
- **Client** (I/O): ``run_bench`` streams every request with httpx and records, per request, the
  ``time.perf_counter()`` at which each ``data:`` line's bytes arrived. Lines are split from the raw byte
  stream and only parsed as JSON after the stream ends, so parsing never delays a timestamp.
- **Metrics** (pure): ``summarize`` turns the per-request ``RequestOutcome`` list into a ``BenchResult``
  with vLLM's JSON key names; ``format_summary`` prints vLLM's result block.

Definitions (vLLM's, with glmdeploy's choices where vLLM versions differ):

- A chunk *carries output* when its first choice's delta has a non-empty ``content``, ``reasoning``,
  ``reasoning_content``, ``tool_calls`` or ``function_call``. Unlike vLLM 0.33, SGLang's
  ``reasoning_content`` counts, so TTFT means the same thing on all three engines (first generated token,
  thinking included). The role-only first chunk (``content: ""``) does not count.
- TTFT = send to the first output chunk; ITL = gaps between consecutive output chunks (per chunk, not per
  token); E2EL = send to the last output chunk; TPOT = (E2EL - TTFT) / (output_tokens - 1), only for
  requests with more than one output token. Statistics are over requests (TTFT, TPOT, E2EL) or over all
  gaps of all requests (ITL); std is the population std, percentiles interpolate linearly (numpy's default).
- Output tokens are the server's ``usage.completion_tokens`` (``stream_options.include_usage`` is always
  sent); when a server sends no usage, the number of output chunks stands in (one chunk per token on
  these engines without speculative decoding). Input tokens are ``usage.prompt_tokens`` (the prompt as
  the server counted it, chat template included), else the requested ``input_len``.
- A request fails on an HTTP error status, a connection error or timeout, a stream that closes before a
  ``finish_reason`` or ``[DONE]``, a non-JSON ``data:`` line, an error object in the stream, a JSON answer
  instead of a stream, or a stream with no output at all. Failed requests count in ``failed`` and their
  first errors are kept; they do not stop the run and do not enter the latency statistics or token totals.
- A request sent on a pooled keep-alive connection that the server closes (or resets) before a single
  response header is re-sent once on a new connection and does not count as failed: that is how a server's
  idle close crossing the request looks (llama-server's cpp-httplib closes connections idle for 5 s
  without a word), and such a server never read it. The request's clock keeps running from the first send.
  A new connection closed without an answer is a failure; the re-sends are counted in
  ``stale_connection_retries``.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import ssl
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field

from glmdeploy.errors import UsageError
from glmdeploy.urls import check_port

BACKEND = "openai-chat"
MAX_ERRORS_KEPT = 10
PERCENTILE = 99
METRICS = ("ttft", "tpot", "itl", "e2el")
_DECODER = json.JSONDecoder()

# Common English words of at most four letters: each is one token (with its leading space) for GLM's BPE
# tokenizer and exactly one for the sandbox's stand-in, so a prompt of N words is about N tokens (exactly N in
# the sandbox) plus the chat template's few.
VOCAB: tuple[str, ...] = tuple(
    """the of and to in is it you that he was for on are as with his they at be this have from or one had by
    word but not what all were we when your can said use an each she do how if will up out many then them so
    some her make like him into time has look two more go see way no than been call who its now find long
    down day did get come made may part over new take only work know live me back give most very our just
    name good man say help much too mean old any same tell boy low line sea sky blue red tree city road rain
    wind fire cold warm book door open game home hand high year girl keep kind last left life fish bird moon
    star snow farm ship lake hill king free late""".split()
)


# --------------------------------------------------------------------------- options and workload


def parse_request_rate(text: str | float) -> float:
    """``inf`` or a positive finite number of requests per second; anything else is a usage error."""
    try:
        rate = float(text)
    except (TypeError, ValueError):
        rate = math.nan
    if math.isnan(rate) or rate <= 0:
        raise UsageError(f"--request-rate must be a positive number or 'inf', got {text!r}")
    return rate


class BenchOptions(BaseModel):
    """What to send and how fast. Defaults follow vLLM's random dataset except ``num_prompts``."""

    model_config = ConfigDict(frozen=True)

    num_prompts: int = Field(default=100, ge=1)
    input_len: int = Field(default=1024, ge=1, description="Prompt words (about one token each).")
    output_len: int = Field(default=128, ge=1, description="max_tokens, with ignore_eos.")
    request_rate: float = Field(default=math.inf, gt=0, description="Requests/s; inf sends all at t=0.")
    burstiness: float = Field(default=1.0, gt=0, description="Gamma shape: 1 = Poisson, <1 burstier.")
    max_concurrency: int | None = Field(default=None, ge=1)
    seed: int = 0
    timeout_s: float = Field(default=600.0, gt=0, description="Per-request limit, connect to last byte.")
    label: str | None = None


@dataclass(frozen=True)
class BenchRequest:
    prompt: str
    input_len: int
    output_len: int


def make_requests(num_prompts: int, input_len: int, output_len: int, seed: int) -> list[BenchRequest]:
    """Random-word prompts of ``input_len`` words from ``VOCAB``; the same seed gives the same prompts."""
    rng = random.Random(seed)
    return [BenchRequest(" ".join(rng.choices(VOCAB, k=input_len)), input_len, output_len) for _ in range(num_prompts)]


def arrival_offsets(num_prompts: int, request_rate: float, burstiness: float, seed: int) -> list[float]:
    """Seconds after the start at which each request is sent (vLLM's ``get_request`` schedule).

    Gaps are gamma-distributed with shape ``burstiness`` and scale ``1 / (rate x burstiness)``, so their
    mean is ``1 / rate`` and their coefficient of variation ``1 / sqrt(burstiness)`` (1 = Poisson);
    ``burstiness = inf`` is constant spacing. The cumulative times are then rescaled so the last one is
    exactly ``num_prompts / rate``, as vLLM does, which keeps the offered load exact for small runs.
    """
    if math.isinf(request_rate):
        return [0.0] * num_prompts
    rng = random.Random(f"arrivals:{seed}")  # not the prompts' stream: the two stay independent
    if math.isinf(burstiness):
        gaps = [1.0 / request_rate] * num_prompts
    else:
        scale = 1.0 / (request_rate * burstiness)
        gaps = [rng.gammavariate(burstiness, scale) for _ in range(num_prompts)]
    offsets: list[float] = []
    total = 0.0
    for gap in gaps:
        total += gap
        offsets.append(total)
    if total > 0:
        factor = (num_prompts / request_rate) / total
        offsets = [t * factor for t in offsets]
    return offsets


# --------------------------------------------------------------------------- per-request outcome


@dataclass
class RequestOutcome:
    """What one request measured. Times are seconds; ``ttft``/``latency`` are 0 for failed requests."""

    success: bool = False
    error: str = ""
    input_tokens: int = 0
    output_tokens: int = 0
    ttft: float = 0.0
    latency: float = 0.0
    itl: list[float] = field(default_factory=list)
    start_time: float = 0.0
    # Re-sends after a pooled connection turned out closed by the server (see the module docstring).
    stale_retries: int = 0


def outcome_from_stream(events: Sequence[tuple[float, bytes]], sent_at: float, request: BenchRequest) -> RequestOutcome:
    """Interpret a finished stream: ``events`` are (arrival time, payload after ``data:``) in order."""
    out = RequestOutcome(start_time=sent_at)
    last = 0.0
    chunks = 0
    finished = False
    usage: dict[str, Any] | None = None
    decode = _DECODER.decode
    for arrived, payload in events:
        if payload == b"[DONE]":
            finished = True
            continue
        try:
            obj = decode(payload.decode())
        except ValueError:  # UnicodeDecodeError included
            out.error = f"invalid JSON in stream: {payload[:80].decode('utf-8', 'replace')!r}"
            return out
        if type(obj) is not dict:
            out.error = f"unexpected stream event: {payload[:80].decode('utf-8', 'replace')!r}"
            return out
        if obj.get("error") or obj.get("object") == "error":  # some chunks carry "error": null
            out.error = f"error in stream: {_error_message(obj)}"
            return out
        choices = obj.get("choices")
        if choices and type(choices) is list and type(choices[0]) is dict:
            choice = choices[0]
            delta = choice.get("delta")
            if (
                delta
                and type(delta) is dict
                and (
                    delta.get("content")
                    or delta.get("reasoning")
                    or delta.get("reasoning_content")
                    or delta.get("tool_calls")
                    or delta.get("function_call")
                )
            ):
                if chunks == 0:
                    out.ttft = arrived - sent_at
                else:
                    out.itl.append(arrived - last)
                last = arrived
                chunks += 1
            if choice.get("finish_reason"):
                finished = True
        usage_field = obj.get("usage")
        if usage_field and type(usage_field) is dict:
            usage = usage_field
    if not finished:
        out.error = "stream ended before the response was complete"
        return out
    if chunks == 0:
        out.error = "stream carried no output"
        return out
    out.latency = last - sent_at
    completion = usage.get("completion_tokens") if usage else None
    prompt = usage.get("prompt_tokens") if usage else None
    out.output_tokens = completion if isinstance(completion, int) and completion > 0 else chunks
    out.input_tokens = prompt if isinstance(prompt, int) and prompt > 0 else request.input_len
    out.success = True
    return out


def _error_message(obj: Any) -> str:
    """The human part of an engine's error body (vLLM ``{"error": {...}}``, others ``{"message": ...}``)."""
    if isinstance(obj, dict):
        err = obj.get("error")
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])[:200]
        if isinstance(err, str) and err:
            return err[:200]
        for key in ("message", "detail"):
            if obj.get(key):
                return str(obj[key])[:200]
    return json.dumps(obj)[:200]


# --------------------------------------------------------------------------- metrics (pure)


def mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def std(values: Sequence[float]) -> float:
    """Population standard deviation (numpy's default), 0 for no values."""
    if not values:
        return 0.0
    m = mean(values)
    return math.sqrt(sum((v - m) ** 2 for v in values) / len(values))


def percentile(values: Sequence[float], p: float) -> float:
    """Linear interpolation between closest ranks (numpy's default), 0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = (len(ordered) - 1) * p / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def tpot_of(outcome: RequestOutcome) -> float | None:
    """(E2EL - TTFT) / (output_tokens - 1); None when there is no second token to time."""
    if not outcome.success or outcome.output_tokens <= 1:
        return None
    return (outcome.latency - outcome.ttft) / (outcome.output_tokens - 1)


def peaks(outcomes: Sequence[RequestOutcome]) -> tuple[float, int]:
    """(max output chunks in one second, max requests in flight in one second) over 1 s buckets from the
    first successful send, as vLLM's ``max_output_tokens_per_s`` / ``max_concurrent_requests`` (per chunk)."""
    ok = [o for o in outcomes if o.success]
    if not ok:
        return 0.0, 0
    origin = min(o.start_time for o in ok)
    chunks: dict[int, int] = {}
    active: dict[int, int] = {}
    for o in ok:
        at = o.start_time + o.ttft
        times = [at]
        for gap in o.itl:
            at += gap
            times.append(at)
        for t in times:
            bucket = int(t - origin)
            chunks[bucket] = chunks.get(bucket, 0) + 1
        for second in range(int(o.start_time - origin), int(o.start_time + o.latency - origin) + 1):
            active[second] = active.get(second, 0) + 1
    return float(max(chunks.values())), max(active.values())


class RequestSample(BaseModel):
    """One request's timings, seconds; ``start`` is from the run's start (the first send's schedule)."""

    start: float
    success: bool
    ttft: float = 0.0
    latency: float = 0.0
    itl: list[float] = Field(default_factory=list)
    output_tokens: int = 0

    def tpot(self) -> float | None:
        if not self.success or self.output_tokens <= 1:
            return None
        return (self.latency - self.ttft) / (self.output_tokens - 1)


class BenchResult(BaseModel):
    """The result, with ``vllm bench serve``'s JSON key names (engines.md §9) plus a few of glmdeploy's."""

    date: str
    endpoint_type: str = BACKEND
    backend: str = BACKEND
    label: str | None = None
    model_id: str
    num_prompts: int
    input_len: int
    output_len: int
    seed: int
    request_rate: float | str = Field(description='Requests/s, or "inf".')
    burstiness: float | str = Field(description='Gamma shape, or "inf" for constant spacing.')
    max_concurrency: int | None
    duration: float
    completed: int
    failed: int
    total_input_tokens: int
    total_output_tokens: int
    request_throughput: float
    request_goodput: float | None = None
    output_throughput: float
    total_token_throughput: float
    max_output_tokens_per_s: float = Field(description="Most output chunks seen in one 1 s bucket.")
    max_concurrent_requests: int = Field(description="Most requests in flight during one 1 s bucket.")
    mean_ttft_ms: float
    median_ttft_ms: float
    std_ttft_ms: float
    p99_ttft_ms: float
    mean_tpot_ms: float
    median_tpot_ms: float
    std_tpot_ms: float
    p99_tpot_ms: float
    mean_itl_ms: float
    median_itl_ms: float
    std_itl_ms: float
    p99_itl_ms: float
    mean_e2el_ms: float
    median_e2el_ms: float
    std_e2el_ms: float
    p99_e2el_ms: float
    errors: list[str] = Field(default_factory=list, description=f"The first {MAX_ERRORS_KEPT} failure reasons.")
    stale_connection_retries: int = Field(
        default=0, description="Requests re-sent once because the server had closed their pooled connection."
    )
    # Per-request timings for the HTML report's distributions. Left out of --json and --output (exclude):
    # a large run's inter-token gaps would be hundreds of MB, and the JSON keeps vLLM's summary shape.
    samples: list[RequestSample] = Field(default_factory=list, exclude=True)

    def series(self) -> dict[str, list[float]]:
        """Each latency metric's values in seconds, as the statistics above are computed from them."""
        ok = [s for s in self.samples if s.success]
        return {
            "ttft": [s.ttft for s in ok],
            "tpot": [t for s in ok if (t := s.tpot()) is not None],
            "itl": [gap for s in ok for gap in s.itl],
            "e2el": [s.latency for s in ok],
        }


def _json_number(value: float) -> float | str:
    return "inf" if math.isinf(value) else value


def summarize(
    outcomes: Sequence[RequestOutcome],
    duration: float,
    options: BenchOptions,
    model: str,
    *,
    date: str | None = None,
    started: float | None = None,
) -> BenchResult:
    """Aggregate per-request outcomes into the result (vLLM's ``calculate_metrics``).

    ``started`` is the ``perf_counter`` of the run's start, the origin of the samples' ``start``; by
    default the earliest send.
    """
    ok = [o for o in outcomes if o.success]
    sent = [o.start_time for o in outcomes if o.start_time > 0]
    origin = started if started is not None else min(sent, default=0.0)
    # model_construct: these values are the client's own floats, and validating 100,000 lists of gaps costs
    # seconds. A request that failed before it was sent has no send time: it is placed at the origin.
    samples = [
        RequestSample.model_construct(
            start=max(0.0, o.start_time - origin) if o.start_time > 0 else 0.0,
            success=o.success, ttft=o.ttft, latency=o.latency, itl=o.itl, output_tokens=o.output_tokens,
        )
        for o in outcomes
    ]
    series: dict[str, list[float]] = {
        "ttft": [o.ttft for o in ok],
        "tpot": [t for o in ok if (t := tpot_of(o)) is not None],
        "itl": [gap for o in ok for gap in o.itl],
        "e2el": [o.latency for o in ok],
    }
    stats: dict[str, float] = {}
    for name, values in series.items():
        stats[f"mean_{name}_ms"] = mean(values) * 1000
        stats[f"median_{name}_ms"] = percentile(values, 50) * 1000
        stats[f"std_{name}_ms"] = std(values) * 1000
        stats[f"p{PERCENTILE}_{name}_ms"] = percentile(values, PERCENTILE) * 1000
    total_in = sum(o.input_tokens for o in ok)
    total_out = sum(o.output_tokens for o in ok)
    per_s = 1.0 / duration if duration > 0 else 0.0
    peak_chunks, peak_active = peaks(outcomes)
    return BenchResult(
        date=date or datetime.now(UTC).strftime("%Y%m%d-%H%M%S"),
        label=options.label,
        model_id=model,
        num_prompts=options.num_prompts,
        input_len=options.input_len,
        output_len=options.output_len,
        seed=options.seed,
        request_rate=_json_number(options.request_rate),
        burstiness=_json_number(options.burstiness),
        max_concurrency=options.max_concurrency,
        duration=duration,
        completed=len(ok),
        failed=len(outcomes) - len(ok),
        total_input_tokens=total_in,
        total_output_tokens=total_out,
        request_throughput=len(ok) * per_s,
        output_throughput=total_out * per_s,
        total_token_throughput=(total_in + total_out) * per_s,
        max_output_tokens_per_s=peak_chunks,
        max_concurrent_requests=peak_active,
        errors=[o.error for o in outcomes if not o.success][:MAX_ERRORS_KEPT],
        stale_connection_retries=sum(o.stale_retries for o in outcomes),
        samples=samples,
        **stats,
    )


_SECTIONS = (
    ("ttft", "TTFT", "Time to First Token"),
    ("tpot", "TPOT", "Time per Output Token (excl. 1st token)"),
    ("itl", "ITL", "Inter-token Latency"),
    ("e2el", "E2EL", "End-to-end Latency"),
)


def format_summary(result: BenchResult) -> str:
    """vLLM's printed result block (seed 002's shape), E2EL included."""
    rows: list[str] = ["{s:{c}^{n}}".format(s=" Serving Benchmark Result ", n=50, c="=")]

    def row(label: str, value: object) -> None:
        text = f"{value:<10.2f}" if isinstance(value, float) else f"{value!s:<10}"
        rows.append(f"{label:<40} {text}".rstrip())

    row("Successful requests:", result.completed)
    row("Failed requests:", result.failed)
    if result.max_concurrency is not None:
        row("Maximum request concurrency:", result.max_concurrency)
    rate = result.request_rate
    row("Request rate configured (RPS):", rate if isinstance(rate, str) else float(rate))
    row("Benchmark duration (s):", result.duration)
    row("Total input tokens:", result.total_input_tokens)
    row("Total generated tokens:", result.total_output_tokens)
    row("Request throughput (req/s):", result.request_throughput)
    row("Output token throughput (tok/s):", result.output_throughput)
    row("Peak output token throughput (tok/s):", result.max_output_tokens_per_s)
    row("Peak concurrent requests:", float(result.max_concurrent_requests))
    row("Total Token throughput (tok/s):", result.total_token_throughput)
    if result.stale_connection_retries:
        row("Re-sent on a new connection:", result.stale_connection_retries)
    values = result.model_dump()
    for key, short, title in _SECTIONS:
        rows.append("{s:{c}^{n}}".format(s=title, n=50, c="-"))
        row(f"Mean {short} (ms):", float(values[f"mean_{key}_ms"]))
        row(f"Median {short} (ms):", float(values[f"median_{key}_ms"]))
        row(f"P{PERCENTILE} {short} (ms):", float(values[f"p{PERCENTILE}_{key}_ms"]))
    rows.append("=" * 50)
    return "\n".join(rows)


# --------------------------------------------------------------------------- client (I/O)


def chat_url(base_url: str) -> str:
    """``.../v1/chat/completions`` from an OpenAI base URL (``http://host:port`` gets ``/v1``)."""
    base = base_url.rstrip("/")
    parts = urlsplit(base)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(f"--url must look like http(s)://HOST[:PORT]/v1, got {base_url!r}")
    check_port(base, option="--url")
    if not parts.path:
        base += "/v1"
    return f"{base}/chat/completions"


def shown_url(url: str) -> str:
    """The URL as it may be printed: no user:password@, query or fragment (a key may sit in any of them)."""
    parts = urlsplit(url.strip())
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    try:
        port = f":{parts.port}" if parts.port is not None else ""
    except ValueError:
        port = ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


def _is_local(url: str) -> bool:
    return (urlsplit(url).hostname or "") in ("127.0.0.1", "localhost", "::1")


def request_body(model: str, request: BenchRequest) -> bytes:
    return json.dumps(
        {
            "model": model,
            "messages": [{"role": "user", "content": request.prompt}],
            "max_tokens": request.output_len,
            # vLLM and SGLang take it as an extra sampling parameter; LightLLM ignores unknown fields.
            "ignore_eos": True,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
    ).encode()


async def _send_one(client: Any, http_request: Any, request: BenchRequest, timeout_s: float) -> RequestOutcome:
    """Send one built request and time its stream; every failure becomes a failed outcome with a reason."""
    import httpx

    events: list[tuple[float, bytes]] = []
    perf = time.perf_counter
    sent_at = perf()
    retries = 0
    try:
        async with asyncio.timeout(timeout_s):
            while True:
                attempt = _Attempt()
                http_request.extensions["trace"] = attempt.trace
                try:
                    response = await client.send(http_request, stream=True)
                    break
                except (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError) as exc:
                    if retries or not attempt.stale_connection(exc):
                        raise
                    retries += 1  # the pool drops the dead connection; the next send opens a new one
            try:
                if response.status_code != 200:
                    raw = b""
                    async for piece in response.aiter_bytes():
                        raw += piece
                        if len(raw) > 4096:
                            break
                    try:
                        detail = _error_message(json.loads(raw))
                    except ValueError:
                        detail = raw[:200].decode("utf-8", "replace").strip()
                    return RequestOutcome(start_time=sent_at, error=f"HTTP {response.status_code}: {detail}")
                kind = response.headers.get("content-type", "")
                if kind.startswith("application/json"):  # a server that ignored stream: true
                    return RequestOutcome(start_time=sent_at, error=f"not an event stream ({kind})")
                pending = b""
                async for piece in response.aiter_bytes():
                    now = perf()
                    lines = (pending + piece).split(b"\n") if pending else piece.split(b"\n")
                    pending = lines.pop()
                    for line in lines:
                        if line[:5] == b"data:":
                            events.append((now, line[5:].strip()))
                if pending[:5] == b"data:":
                    events.append((perf(), pending[5:].strip()))
            finally:
                await response.aclose()
    except TimeoutError:
        return RequestOutcome(start_time=sent_at, error=f"timed out after {timeout_s:g} s", stale_retries=retries)
    except httpx.RemoteProtocolError as exc:
        return RequestOutcome(
            start_time=sent_at, error=f"connection closed mid-response: {exc}", stale_retries=retries
        )
    except httpx.HTTPError as exc:
        return RequestOutcome(start_time=sent_at, error=_describe(exc), stale_retries=retries)
    except OSError as exc:
        return RequestOutcome(start_time=sent_at, error=f"{type(exc).__name__}: {exc}", stale_retries=retries)
    outcome = outcome_from_stream(events, sent_at, request)
    outcome.stale_retries = retries
    return outcome


class _Attempt:
    """What httpcore's ``trace`` extension (documented by httpx) tells about one send of a request."""

    def __init__(self) -> None:
        self.new_connection = False
        self.headers_failed = False

    async def trace(self, event: str, info: dict[str, Any]) -> None:
        if event == "connection.connect_tcp.started":
            self.new_connection = True
        elif event == "http11.receive_response_headers.failed":
            self.headers_failed = True

    def stale_connection(self, exc: Exception) -> bool:
        """Whether the server closed a pooled keep-alive connection under this request, before answering.

        Only a reused connection qualifies (a new one closed without an answer is the server refusing the
        request), and only before any response header arrived, as an EOF ("Server disconnected without
        sending a response") or a reset.
        """
        import httpx

        if self.new_connection or not self.headers_failed:
            return False
        if isinstance(exc, httpx.RemoteProtocolError):
            return "without sending a response" in str(exc)
        seen: BaseException | None = exc
        while seen is not None:  # httpx.ReadError <- httpcore.ReadError <- ConnectionResetError
            if isinstance(seen, ConnectionResetError | BrokenPipeError):
                return True
            seen = seen.__cause__ or seen.__context__
        return "connection reset" in str(exc).lower()


def _describe(exc: BaseException) -> str:
    """``ReadError: ...`` with the underlying OS error when httpx's own message is empty."""
    detail = str(exc) or str(exc.__cause__ or exc.__context__ or "") or type(exc.__cause__ or exc).__name__
    return f"{type(exc).__name__}: {detail}"


async def run_bench_async(
    url: str,
    api_key: str | None,
    model: str,
    options: BenchOptions,
    on_done: Callable[[RequestOutcome], None] | None = None,
    *,
    verify: ssl.SSLContext | None = None,
) -> BenchResult:
    """Run the benchmark against the OpenAI base URL ``url`` (``.../v1``) and summarize it."""
    import httpx

    requests = make_requests(options.num_prompts, options.input_len, options.output_len, options.seed)
    offsets = arrival_offsets(options.num_prompts, options.request_rate, options.burstiness, options.seed)
    bodies = [request_body(model, r) for r in requests]
    target = chat_url(url)
    headers = {"Content-Type": "application/json", "Accept": "text/event-stream"}
    if api_key:
        headers["Authorization"] = _bearer(api_key)
    # The per-request limit is enforced around the whole exchange; httpx's own timeouts only as a backstop.
    timeout = httpx.Timeout(options.timeout_s + 5, connect=min(30.0, options.timeout_s + 5))
    local = _is_local(url)
    # Built once (each client would otherwise load the CA bundle); a pinned endpoint's trusts only its certificate.
    ssl_context = verify if verify is not None else httpx.create_ssl_context()
    semaphore = asyncio.Semaphore(options.max_concurrency) if options.max_concurrency else None
    outcomes: list[RequestOutcome] = [RequestOutcome() for _ in requests]
    # The connection pool is sized to the concurrency (max_concurrency, else one slot per request), but kept
    # as one single-connection client per in-flight slot rather than one client with N connections:
    # httpcore's pool does O(connections^2) bookkeeping per request, which at a few hundred connections
    # costs more CPU than reading the streams and would skew the timestamps.
    lanes: list[httpx.AsyncClient] = []
    idle: list[httpx.AsyncClient] = []
    one_connection = httpx.Limits(max_connections=1, max_keepalive_connections=1)

    def lane() -> httpx.AsyncClient:
        if idle:
            return idle.pop()
        client = httpx.AsyncClient(
            limits=one_connection, headers=headers, timeout=timeout, verify=ssl_context,
            trust_env=not local and verify is None,
        )
        lanes.append(client)
        return client

    async def send(index: int) -> RequestOutcome:
        client = lane()
        try:
            # Built before the clock starts: TTFT should not include httpx merging headers and parsing the URL.
            http_request = client.build_request("POST", target, content=bodies[index])
            return await _send_one(client, http_request, requests[index], options.timeout_s)
        finally:
            idle.append(client)

    # httpx imports anyio's backend on the first request; done here, it does not land in the first TTFT.
    import anyio

    await anyio.sleep(0)
    started = time.perf_counter()

    async def one(index: int) -> None:
        delay = started + offsets[index] - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        try:
            if semaphore is None:
                outcome = await send(index)
            else:
                async with semaphore:
                    outcome = await send(index)
        except Exception as exc:  # whatever one request hits, the others go on and it is counted as failed
            outcome = RequestOutcome(error=_describe(exc))
        if api_key and api_key in outcome.error:  # a server may echo the request's headers in an error body
            outcome.error = outcome.error.replace(api_key, "***")
        outcomes[index] = outcome
        if on_done is not None:
            on_done(outcome)

    try:
        await asyncio.gather(*(one(i) for i in range(len(requests))))
        duration = time.perf_counter() - started
    finally:
        await asyncio.gather(*(client.aclose() for client in lanes), return_exceptions=True)
    return summarize(outcomes, duration, options, model, started=started)


def run_bench(
    url: str,
    api_key: str | None,
    model: str,
    options: BenchOptions,
    on_done: Callable[[RequestOutcome], None] | None = None,
    verify: ssl.SSLContext | None = None,
) -> BenchResult:
    """Blocking ``run_bench_async`` (for ``glmdeploy bench`` and ``glmdeploy ci``)."""
    return asyncio.run(run_bench_async(url, api_key, model, options, on_done, verify=verify))


def _bearer(api_key: str) -> str:
    """The Authorization value, refusing a key httpx could not send: its error would quote the key."""
    from glmdeploy.vast.keys import sendable

    if not sendable(api_key):
        raise UsageError(
            "the endpoint API key contains a space, a line break, a control or a non-ASCII character, "
            "so it cannot be sent; a key is one line of printable ASCII"
        )
    return f"Bearer {api_key}"


def first_model(url: str, api_key: str | None, timeout_s: float = 30.0, verify: ssl.SSLContext | None = None) -> str:
    """The first model id ``GET /models`` lists (what vLLM's bench does without --model)."""
    import httpx

    base = chat_url(url).removesuffix("/chat/completions")
    headers = {"Authorization": _bearer(api_key)} if api_key else {}
    try:
        response = httpx.get(f"{base}/models", headers=headers, timeout=timeout_s,
                             trust_env=not _is_local(url) and verify is None,
                             verify=verify if verify is not None else True)
        response.raise_for_status()
        data = response.json()["data"]
        return str(data[0]["id"])
    except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
        from glmdeploy.errors import EndpointUnreachable

        raise EndpointUnreachable(f"cannot reach {shown_url(base)}: {_describe(exc)}") from None
    except (httpx.HTTPError, ValueError, KeyError, IndexError, TypeError) as exc:
        reason = type(exc).__name__
        raise UsageError(f"could not read the model name from {base}/models ({reason}); pass --model") from None
