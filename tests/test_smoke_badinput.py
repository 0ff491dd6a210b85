"""Smoke checks against servers that misbehave: every problem is a failed check with its reason, never a crash.

A small ``http.server`` in a thread on 127.0.0.1 plays the broken server; each test sets the routes it needs.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from glmdeploy.smoke import SmokeReport, Target, run_smoke

Route = Callable[["Handler"], None]
MODELS = {"object": "list", "data": [{"id": "m", "object": "model"}]}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    routes: dict[tuple[str, str], Route] = {}

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _dispatch(self, method: str) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self.body = json.loads(self.rfile.read(length)) if length else None
        route = self.routes.get((method, self.path.split("?")[0]))
        if route is None:
            self.reply(404, b'{"detail": "Not Found"}')
            return
        route(self)

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def reply(self, status: int, body: bytes, content_type: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def reply_json(self, data: Any, status: int = 200) -> None:
        self.reply(status, json.dumps(data).encode())

    def start_stream(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

    def chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def end_stream(self) -> None:
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def cut(self) -> None:
        """Drop the connection without finishing the response."""
        self.wfile.flush()
        self.connection.shutdown(socket.SHUT_RDWR)
        self.close_connection = True


class QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # clients hanging up mid-answer is what several tests are about


@pytest.fixture
def server() -> Iterator[Callable[[dict[tuple[str, str], Route]], str]]:
    servers: list[QuietServer] = []

    def start(routes: dict[tuple[str, str], Route]) -> str:
        handler = type("RouteHandler", (Handler,), {"routes": routes})
        httpd = QuietServer(("127.0.0.1", 0), handler)
        threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        servers.append(httpd)
        return f"http://127.0.0.1:{httpd.server_address[1]}"

    yield start
    for httpd in servers:
        httpd.shutdown()
        httpd.server_close()


def smoke(url: str, *only: str, timeout: float = 5.0, **target: Any) -> SmokeReport:
    target.setdefault("api_key", "k")
    target.setdefault("model", "m")
    return run_smoke(Target.from_url(url, **target), only=only, timeout=timeout)


def detail(report: SmokeReport, name: str) -> str:
    check = next(c for c in report.checks if c.name == name)
    assert check.status == "failed", check
    return check.detail


def sse(*events: Any) -> bytes:
    return b"".join(b"data: " + (e if isinstance(e, bytes) else json.dumps(e).encode()) + b"\n\n" for e in events)


def delta(content: str | None = None, finish: str | None = None) -> dict[str, Any]:
    d = {} if content is None else {"content": content}
    return {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": d, "finish_reason": finish}]}


USAGE = {"object": "chat.completion.chunk", "choices": [],
         "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}}


def streaming(*parts: bytes, pause: float = 0.01, finish: bool = True) -> Route:
    def route(h: Handler) -> None:
        h.start_stream()
        for part in parts:
            h.chunk(part)
            time.sleep(pause)
        if finish:
            h.end_stream()
        else:
            h.cut()

    return route


# ------------------------------------------------------------------------------------- transport


def test_unreachable_server_fails_each_check_quickly() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    report = smoke(f"http://127.0.0.1:{port}", "health", "models", "chat", "stream")
    assert not report.passed
    assert all(c.status == "failed" for c in report.checks)
    first, *rest = report.checks
    assert first.detail.startswith("cannot connect: ")
    # Once the server cannot be reached, the other checks fail at once, saying why.
    assert all(c.detail == f"not run: health could not connect ({first.detail})" for c in rest)


def test_tls_to_a_plain_http_server_is_a_tls_error(server: Callable[..., str]) -> None:
    url = server({("GET", "/health"): lambda h: h.reply(200, b"")})
    report = smoke(url.replace("http://", "https://"), "health")
    assert detail(report, "health").startswith("TLS error")


def test_a_server_that_never_answers_times_out(server: Callable[..., str]) -> None:
    url = server({("GET", "/v1/models"): lambda h: time.sleep(1.5)})
    report = smoke(url, "models", timeout=0.3)
    assert detail(report, "models") == "no answer in time (ReadTimeout)"


# ------------------------------------------------------------------------------------- bodies


def test_non_json_bodies(server: Callable[..., str]) -> None:
    url = server({
        ("GET", "/v1/models"): lambda h: h.reply(200, b"<html>hello</html>", "text/html"),
        ("POST", "/v1/chat/completions"): lambda h: h.reply(200, b"not json at all"),
    })
    report = smoke(url, "models", "chat", "reasoning", "tools", "max_tokens")
    assert detail(report, "models") == "GET /v1/models: the body is not JSON: '<html>hello</html>'"
    assert detail(report, "chat") == "chat completion: the body is not JSON: 'not json at all'"
    assert all(c.status == "failed" for c in report.checks)


def test_json_of_the_wrong_shape(server: Callable[..., str]) -> None:
    url = server({
        ("GET", "/v1/models"): lambda h: h.reply_json({"models": ["m"]}),
        ("POST", "/v1/chat/completions"): lambda h: h.reply_json({"choices": []}),
    })
    report = smoke(url, "models", "chat")
    assert detail(report, "models") == "GET /v1/models: no 'data' list in the body"
    assert detail(report, "chat") == "chat completion: the answer has no choices"


def test_an_answer_without_usage_or_with_a_bad_finish_reason(server: Callable[..., str]) -> None:
    answers = iter([
        {"choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}]},
        {"choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "abort"}],
         "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}},
        {"choices": [{"index": 0, "message": {"role": "assistant", "content": ""}, "finish_reason": "stop"}],
         "usage": {"prompt_tokens": 1, "completion_tokens": 0, "total_tokens": 1}},
    ])
    url = server({("POST", "/v1/chat/completions"): lambda h: h.reply_json(next(answers))})
    assert detail(smoke(url, "chat"), "chat") == "no usage in the answer"
    assert detail(smoke(url, "chat"), "chat") == "finish_reason 'abort' is not one of stop, length, tool_calls"
    assert detail(smoke(url, "chat"), "chat").startswith("empty answer")


def test_http_errors_quote_the_status_and_body(server: Callable[..., str]) -> None:
    url = server({("POST", "/v1/chat/completions"): lambda h: h.reply_json({"error": "overloaded"}, 500)})
    assert detail(smoke(url, "chat"), "chat") == 'chat completion: HTTP 500 \'{"error": "overloaded"}\''


# ------------------------------------------------------------------------------------- streams


def test_a_well_formed_stream_passes(server: Callable[..., str]) -> None:
    """The reference for the broken variants below: a plain OpenAI stream with no GLM extras."""
    url = server({("POST", "/v1/chat/completions"): streaming(
        sse(delta("")), sse(delta("Hello")), sse(delta(" there")), sse(delta(None, "stop")), sse(USAGE),
        b"data: [DONE]\n\n",
    )})
    report = smoke(url, "stream")
    assert report.passed, report.checks


def test_sse_with_broken_framing(server: Callable[..., str]) -> None:
    url = server({("POST", "/v1/chat/completions"): streaming(sse(delta("Hi")), b"data: {\"choices\": [\n\n")})
    assert detail(smoke(url, "stream"), "stream") == (
        "streamed completion: event 2 is not JSON: '{\"choices\": ['"
    )


def test_a_stream_without_data_lines(server: Callable[..., str]) -> None:
    url = server({("POST", "/v1/chat/completions"): streaming(b'{"choices": []}\n\n', b"[DONE]\n\n")})
    assert detail(smoke(url, "stream"), "stream") == "the stream held no chunk and no [DONE]"


def test_a_server_that_closes_mid_stream(server: Callable[..., str]) -> None:
    url = server({("POST", "/v1/chat/completions"): streaming(sse(delta("")), sse(delta("Hel")), finish=False)})
    text = detail(smoke(url, "stream"), "stream")
    assert text.startswith("streamed completion: the connection broke mid-stream after 2 chunks (")


def test_a_stream_cut_inside_an_event(server: Callable[..., str]) -> None:
    url = server({("POST", "/v1/chat/completions"): streaming(sse(delta("Hi")), b'data: {"choi')})
    assert detail(smoke(url, "stream"), "stream").startswith("streamed completion: the stream ended mid-event")


def test_a_buffered_stream_is_not_incremental(server: Callable[..., str]) -> None:
    whole = sse(delta(""), delta("Hello"), delta(None, "stop"), USAGE) + b"data: [DONE]\n\n"
    url = server({("POST", "/v1/chat/completions"): streaming(whole)})
    assert "chunks arrived within" in detail(smoke(url, "stream"), "stream")


def test_a_stream_flushed_in_two_bursts_is_not_incremental(server: Callable[..., str]) -> None:
    """A first chunk, then 200 more at once: a gap, but far less than 200 decoded tokens take."""
    rest = b"".join(sse(delta("x")) for _ in range(198)) + sse(delta(None, "stop"), USAGE) + b"data: [DONE]\n\n"
    url = server({("POST", "/v1/chat/completions"): streaming(sse(delta("")), rest, pause=0.003)})
    text = detail(smoke(url, "stream"), "stream")
    assert text.startswith("201 chunks arrived within ")
    assert "(incremental needs 20.0 ms or more): the stream is not incremental (buffered by a proxy?)" in text


def test_a_stream_without_the_usage_chunk(server: Callable[..., str]) -> None:
    url = server({("POST", "/v1/chat/completions"): streaming(
        sse(delta("")), sse(delta("Hi")), sse(delta(None, "stop")), b"data: [DONE]\n\n",
    )})
    assert "no usage chunk" in detail(smoke(url, "stream"), "stream")


def test_a_json_answer_to_a_stream_request(server: Callable[..., str]) -> None:
    url = server({("POST", "/v1/chat/completions"): lambda h: h.reply_json({"choices": []})})
    assert detail(smoke(url, "stream"), "stream").startswith(
        "streamed completion: the server answered JSON, not an event stream: 200"
    )


def test_a_stream_that_never_ends_is_cut_at_the_timeout(server: Callable[..., str]) -> None:
    url = server({("POST", "/v1/chat/completions"): streaming(*[sse(delta("x"))] * 20, pause=0.05)})
    assert detail(smoke(url, "stream", timeout=0.5), "stream") == (
        "streamed completion: the stream was still going after 0.5 s"
    )


def test_an_error_object_inside_the_stream(server: Callable[..., str]) -> None:
    url = server({("POST", "/v1/chat/completions"): streaming(sse(delta("")), sse({"error": {"message": "boom"}}))})
    assert "the server sent an error in the stream" in detail(smoke(url, "stream"), "stream")


# ------------------------------------------------------------------------------ health, unknown servers


def test_unknown_server_without_health_falls_back_to_models(server: Callable[..., str]) -> None:
    url = server({("GET", "/v1/models"): lambda h: h.reply_json(MODELS)})
    report = smoke(url, "health")
    assert report.passed
    assert report.checks[0].detail == "no /health (404); GET /v1/models: 200"


def test_a_known_engine_without_its_health_path_fails(server: Callable[..., str]) -> None:
    url = server({("GET", "/v1/models"): lambda h: h.reply_json(MODELS)})
    assert detail(smoke(url, "health", engine="vllm"), "health").startswith("GET /health: HTTP 404")


def test_health_503_fails_even_when_models_answers(server: Callable[..., str]) -> None:
    url = server({
        ("GET", "/health"): lambda h: h.reply(503, b""),
        ("GET", "/v1/models"): lambda h: h.reply_json(MODELS),
    })
    assert detail(smoke(url, "health"), "health") == (
        "GET /health: 503, the server is not ready (still warming up?); /v1/models answers 200"
    )


def test_auth_accepts_403_and_reports_what_let_in(server: Callable[..., str]) -> None:
    def models(h: Handler) -> None:
        if h.headers.get("Authorization") == "Bearer k":
            h.reply_json(MODELS)
        else:
            h.reply(403, b'{"error": "Forbidden"}')

    url = server({("GET", "/v1/models"): models, ("POST", "/v1/chat/completions"): lambda h: h.reply(401, b"")})
    report = smoke(url, "auth")
    assert report.passed, report.checks
    assert report.checks[0].detail.startswith("401/403 without a key")


def test_tool_calls_with_arguments_off_the_schema(server: Callable[..., str]) -> None:
    def answer(arguments: str) -> Route:
        message = {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": arguments}}]}
        return lambda h: h.reply_json({"choices": [{"index": 0, "message": message, "finish_reason": "tool_calls"}]})

    for arguments, expected in [
        ('{"town": "Paris"}', "tool call: arguments lack the required string 'city'"),
        ('{"city": 3}', "tool call: arguments lack the required string 'city'"),
        ('["Paris"]', "tool call: arguments are not a JSON object"),
        ('{"city": "Paris", "unit": "kelvin"}', "tool call: 'unit' 'kelvin' is not in the schema's enum"),
    ]:
        url = server({("POST", "/v1/chat/completions"): answer(arguments)})
        assert detail(smoke(url, "tools"), "tools").startswith(expected)


def test_reasoning_that_leaks_only_when_streamed(server: Callable[..., str]) -> None:
    def chat(h: Handler) -> None:
        assert isinstance(h.body, dict)
        if h.body.get("stream"):
            streaming(sse(delta("")), sse(delta("hmm, 42")), sse(delta("</think>42")), sse(delta(None, "stop")),
                      b"data: [DONE]\n\n")(h)
            return
        message = {"role": "assistant", "content": "42", "reasoning_content": "17 + 25 = 42"}
        h.reply_json({"choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
                      "usage": {"prompt_tokens": 9, "completion_tokens": 9, "total_tokens": 18}})

    url = server({("POST", "/v1/chat/completions"): chat})
    assert detail(smoke(url, "reasoning"), "reasoning") == "thinking on, streamed: content holds <think>/</think>"


def test_an_oversized_answer_is_cut_off(server: Callable[..., str]) -> None:
    def huge(h: Handler) -> None:
        h.start_stream()
        piece = b"x" * (1 << 20)
        try:
            for _ in range(12):
                h.chunk(piece)
            h.end_stream()
        except OSError:  # the client hung up, as it should
            h.close_connection = True

    url = server({("GET", "/v1/models"): huge})
    assert detail(smoke(url, "models"), "models") == "GET /v1/models: the answer exceeds 8 MiB"


def test_an_answer_that_trickles_in_is_cut_at_the_timeout(server: Callable[..., str]) -> None:
    url = server({("GET", "/v1/models"): streaming(*[b" "] * 20, pause=0.05)})
    assert detail(smoke(url, "models", timeout=0.4), "models") == (
        "GET /v1/models: the answer was still arriving after 0.4 s"
    )


def test_a_stream_held_open_after_done_still_passes(server: Callable[..., str]) -> None:
    def held(h: Handler) -> None:
        h.start_stream()
        for part in (sse(delta("")), sse(delta("Hi")), sse(delta(None, "stop")), sse(USAGE), b"data: [DONE]\n\n"):
            h.chunk(part)
            time.sleep(0.01)
        time.sleep(1.0)  # longer than the timeout: the check must not wait for the close

    url = server({("POST", "/v1/chat/completions"): held})
    report = smoke(url, "stream", timeout=0.6)
    assert report.passed, report.checks
