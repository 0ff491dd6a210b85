"""The Vast.ai client against servers that misbehave on purpose, over real sockets on 127.0.0.1.

Huge bodies, bodies that trickle in a byte at a time, silence, invalid UTF-8, JSON of the wrong
shape and redirects to other hosts must each end in a one-line ``GlmdeployError`` (exit 7, or 6 for
a refused key, through the CLI): no traceback, no hang, no unbounded memory, and the API key never
reaches another origin.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import httpx
import pytest
from typer.testing import CliRunner

from glmdeploy.cli import app
from glmdeploy.errors import GlmdeployError
from glmdeploy.vast.client import VastClient
from glmdeploy.vast.errors import ApiError, ApiUnreachable, AuthError, CreateOutcomeUnknown

KEY = "vk-HOSTILE-0123456789abcdef"
# Every loop in a server is bounded: nothing here can outlive its test by more than this.
SERVER_LIMIT_S = 20.0
runner = CliRunner()


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]


@dataclass
class Conn:
    """One accepted connection, with what the handler sent on it."""

    sock: socket.socket
    stop: threading.Event
    sent: int = 0

    def send(self, data: bytes) -> bool:
        try:
            self.sock.sendall(data)
        except OSError:
            return False
        self.sent += len(data)
        return True


Behaviour = Callable[[Conn, Received], None]


@dataclass
class HostileServer:
    behaviour: Behaviour
    host: str = "127.0.0.1"
    received: list[Received] = field(default_factory=list)
    sent: list[int] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    name: str = "127.0.0.1"

    def __post_init__(self) -> None:
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind((self.host, 0))
        self.listener.listen(16)
        self.listener.settimeout(0.1)
        self.port = self.listener.getsockname()[1]
        self.threads: list[threading.Thread] = []
        self.acceptor = threading.Thread(target=self._accept, daemon=True)
        self.acceptor.start()

    @property
    def url(self) -> str:
        return f"http://{self.name}:{self.port}"

    def _accept(self) -> None:
        deadline = time.monotonic() + SERVER_LIMIT_S
        while not self.stop.is_set() and time.monotonic() < deadline:
            try:
                sock, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            worker = threading.Thread(target=self._handle, args=(sock,), daemon=True)
            self.threads.append(worker)
            worker.start()

    def _handle(self, sock: socket.socket) -> None:
        sock.settimeout(5)
        conn = Conn(sock, self.stop)
        try:
            request = _read_request(sock)
            if request is None:
                return
            self.received.append(request)
            self.behaviour(conn, request)
        finally:
            self.sent.append(conn.sent)
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def close(self) -> None:
        self.stop.set()
        self.listener.close()
        self.acceptor.join(timeout=5)
        for worker in self.threads:
            worker.join(timeout=5)


def _read_request(sock: socket.socket) -> Received | None:
    data = b""
    while b"\r\n\r\n" not in data:
        try:
            chunk = sock.recv(65536)
        except OSError:
            return None
        if not chunk or len(data) > 1_000_000:
            return None
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    method, path, _ = lines[0].split(" ", 2)
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0") or 0)
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return Received(method, path, headers)


def _head(status: int = 200, extra: str = "", length: int | None = None) -> bytes:
    reason = {200: "OK", 302: "Found", 307: "Temporary Redirect", 401: "Unauthorized"}.get(status, "X")
    sized = f"Content-Length: {length}\r\n" if length is not None else ""
    return f"HTTP/1.1 {status} {reason}\r\nConnection: close\r\n{sized}{extra}\r\n".encode()


def answer(status: int, body: bytes, extra: str = "Content-Type: application/json\r\n") -> Behaviour:
    def behave(conn: Conn, _req: Received) -> None:
        conn.send(_head(status, extra, len(body)) + body)

    return behave


def endless(first: bytes, piece: bytes, *, extra: str = "", limit: int = 200_000_000) -> Behaviour:
    """Headers without a length, then ``piece`` over and over until the client hangs up."""

    def behave(conn: Conn, _req: Received) -> None:
        if not conn.send(_head(200, extra) + first):
            return
        while conn.sent < limit and not conn.stop.is_set():
            if not conn.send(piece):
                return

    return behave


def trickle(head: bytes, *, every: float = 0.3) -> Behaviour:
    """Slowloris: ``head`` at once, then one byte every ``every`` seconds, forever (bounded per test)."""

    def behave(conn: Conn, _req: Received) -> None:
        if not conn.send(head):
            return
        deadline = time.monotonic() + SERVER_LIMIT_S
        while not conn.stop.wait(every) and time.monotonic() < deadline:
            if not conn.send(b" "):
                return

    return behave


def silent(conn: Conn, _req: Received) -> None:
    conn.stop.wait(SERVER_LIMIT_S)


@pytest.fixture(autouse=True)
def no_proxies(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def serve() -> Iterator[Callable[..., HostileServer]]:
    servers: list[HostileServer] = []

    def start(behaviour: Behaviour, *, name: str = "127.0.0.1") -> HostileServer:
        server = HostileServer(behaviour, name=name)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()


def client_for(url: str, **options: object) -> VastClient:
    defaults: dict[str, object] = {
        "timeout": httpx.Timeout(1.0),
        "attempts": 1,
        "sleep": lambda _s: None,
        "response_deadline": 1.5,
        "log_poll_tries": 1,
        "log_poll_interval": 0,
    }
    defaults.update(options)
    return VastClient(KEY, base_url=url, **defaults)  # type: ignore[arg-type]


def one_line(exc: GlmdeployError) -> str:
    message = str(exc)
    assert "\n" not in message and "\r" not in message
    assert KEY not in message
    return message


def search(client: VastClient) -> object:
    with client:
        return client.search_offers({"limit": 3})


# ------------------------------------------------------------------------------------------ huge bodies


def test_an_endless_json_body_is_cut_off_at_the_cap(serve: Callable[..., HostileServer]) -> None:
    server = serve(endless(b'{"offers": [', b'{"id": 1, "gpu_name": "RTX 3090"},' * 2000))
    with pytest.raises(ApiError) as caught:
        search(client_for(server.url, max_body_bytes=1_000_000))
    assert "over 1 MB" in one_line(caught.value)
    server.close()
    # The client hung up: the server got nowhere near its 200 MB.
    assert max(server.sent) < 50_000_000


def test_a_declared_huge_length_is_refused_before_reading(serve: Callable[..., HostileServer]) -> None:
    server = serve(trickle(_head(200, "Content-Type: application/json\r\n", 10**12) + b"{"))
    with pytest.raises(ApiError) as caught:
        search(client_for(server.url, max_body_bytes=1_000_000, response_deadline=30))
    assert "over 1 MB" in one_line(caught.value)


def test_a_chunked_endless_body_is_cut_off(serve: Callable[..., HostileServer]) -> None:
    piece = b"x" * 60_000
    chunk = f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
    server = serve(endless(b"", chunk, extra="Transfer-Encoding: chunked\r\n"))
    with pytest.raises(ApiError) as caught:
        search(client_for(server.url, max_body_bytes=500_000))
    assert "over 0.5 MB" in one_line(caught.value)


def test_a_gzip_bomb_is_cut_off_after_decompression(serve: Callable[..., HostileServer]) -> None:
    bomb = gzip.compress(b"[" + b"0," * 15_000_000 + b"0]", compresslevel=9)
    assert len(bomb) < 200_000
    server = serve(answer(200, bomb, extra="Content-Type: application/json\r\nContent-Encoding: gzip\r\n"))
    with pytest.raises(ApiError) as caught:
        search(client_for(server.url, max_body_bytes=1_000_000))
    assert "over 1 MB" in one_line(caught.value)


def test_a_huge_answer_to_create_is_an_unknown_outcome(serve: Callable[..., HostileServer]) -> None:
    server = serve(endless(b'{"success": true, "new_contract": 1', b"0" * 65536))
    with pytest.raises(CreateOutcomeUnknown) as caught, client_for(server.url, max_body_bytes=200_000) as client:
        client.create_instance(42, image="img", env={}, onstart="true", disk=10, label="glmdeploy:x")
    assert "glmdeploy:x" in one_line(caught.value)
    assert len(server.received) == 1  # never resent: the first one may have rented


def test_a_huge_log_keeps_its_last_whole_lines(serve: Callable[..., HostileServer]) -> None:
    lines = [f"line {i:07d} " + "y" * 80 for i in range(60_000)]  # about 5.5 MB
    log = "".join(line + "\n" for line in lines).encode()

    def behave(conn: Conn, req: Received) -> None:
        if req.path.startswith("/api/v0/instances/request_logs/"):
            body = json.dumps({"success": True, "result_url": f"{server.url}/logs/9.log"}).encode()
            conn.send(_head(200, "Content-Type: application/json\r\n", len(body)) + body)
        else:
            conn.send(_head(200, "Content-Type: text/plain\r\n") + log)

    server = serve(behave)
    with client_for(server.url, max_log_bytes=100_000, response_deadline=10) as client:
        text = client.request_logs(9, tail=100_000)
    got = text.splitlines()
    assert 0 < len(text.encode()) <= 100_000
    assert got == lines[-len(got) :]
    # The log lives on another host in production: it never gets the key.
    log_request = next(r for r in server.received if r.path.startswith("/logs/"))
    assert "authorization" not in log_request.headers


# ------------------------------------------------------------------------------------------ slow servers


def test_a_body_that_trickles_forever_hits_the_deadline(serve: Callable[..., HostileServer]) -> None:
    server = serve(trickle(_head(200, "Content-Type: application/json\r\n") + b'{"offers": ['))
    started = time.monotonic()
    with pytest.raises(ApiUnreachable) as caught:
        search(client_for(server.url))
    one_line(caught.value)
    assert time.monotonic() - started < 15  # bounded: it did not hang


def test_headers_that_trickle_forever_hit_the_read_timeout_when_they_stall(
    serve: Callable[..., HostileServer],
) -> None:
    server = serve(trickle(b"HTTP/1.1 200 OK\r\n", every=2.0))
    with pytest.raises(ApiUnreachable) as caught:
        search(client_for(server.url, attempts=2))
    one_line(caught.value)
    assert len(server.received) == 2  # a plain timeout is retried, then reported


def test_a_silent_server_is_a_timeout_error(serve: Callable[..., HostileServer]) -> None:
    server = serve(silent)
    with pytest.raises(ApiUnreachable) as caught:
        search(client_for(server.url))
    assert "ReadTimeout" in one_line(caught.value)


def test_a_create_whose_answer_trickles_is_an_unknown_outcome(serve: Callable[..., HostileServer]) -> None:
    server = serve(trickle(_head(200, "Content-Type: application/json\r\n") + b"{"))
    with pytest.raises(CreateOutcomeUnknown) as caught, client_for(server.url, attempts=3) as client:
        client.create_instance(42, image="img", env={}, onstart="true", disk=10, label="glmdeploy:y")
    one_line(caught.value)
    assert len(server.received) == 1


def test_a_log_download_that_trickles_gives_no_logs_yet(serve: Callable[..., HostileServer]) -> None:
    slow_log = trickle(_head(200, "Content-Type: text/plain\r\n") + b"loading\n")

    def behave(conn: Conn, req: Received) -> None:
        if req.path.startswith("/api/"):
            answer(200, json.dumps({"success": True, "result_url": f"{server.url}/logs/x"}).encode())(conn, req)
        else:
            slow_log(conn, req)

    server = serve(behave)
    with client_for(server.url) as client:
        assert client.request_logs(9) == ""


# ------------------------------------------------------------------------------------------ bad content


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b"\xff\xfe\x00\x80 not json", "unreadable text"),
        (b"[]", "unexpected shape (list)"),
        (b'"offers"', "unexpected shape (str)"),
        (b"null", "unexpected shape"),
        (b'{"offers": {"id": 1}}', "without an 'offers' list"),
        (b'{"offers": "many"}', "without an 'offers' list"),
        (b"[" * 200_000, "unreadable text"),
        (b"", "an empty body"),
        (b"<html><body>Bad gateway</body></html>", "an HTML page"),
    ],
)
def test_unreadable_or_misshapen_search_answers(
    serve: Callable[..., HostileServer], body: bytes, expected: str
) -> None:
    server = serve(answer(200, body))
    with pytest.raises(ApiError) as caught:
        search(client_for(server.url))
    assert expected in one_line(caught.value)


def test_invalid_utf8_inside_strings_and_wrong_types_keep_usable_offers(
    serve: Callable[..., HostileServer],
) -> None:
    body = (
        b'{"offers": [{"id": "x"}, null, [], {"id": 2, "gpu_name": "RTX \xff3090", "dph_total": "cheap",'
        b' "num_gpus": null, "reliability": {"a": null}, "geolocation": 12}]}'
    )
    server = serve(answer(200, body))
    offers = search(client_for(server.url))
    assert isinstance(offers, list) and [o.id for o in offers] == [2]
    offer = offers[0]
    assert offer.dph_total is None and offer.num_gpus is None and offer.reliability is None
    assert offer.gpu_name is not None and offer.gpu_name.startswith("RTX") and offer.geolocation == "12"


@pytest.mark.parametrize(
    "body",
    [
        b'{"instances": "running"}',
        b'{"instances": {"id": "nine"}}',
        b'{"instances": [{"id": null}]}',
        b'{"instances": 5}',
    ],
)
def test_misshapen_instance_answers_are_api_errors(serve: Callable[..., HostileServer], body: bytes) -> None:
    server = serve(answer(200, body))
    with pytest.raises(ApiError) as caught, client_for(server.url) as client:
        client.show_instance(9)
    one_line(caught.value)


def test_a_huge_unreadable_id_is_not_echoed_whole(serve: Callable[..., HostileServer]) -> None:
    server = serve(answer(200, json.dumps({"instances": {"id": "9" * 50 + "x" * 100_000}}).encode()))
    with pytest.raises(ApiError) as caught, client_for(server.url) as client:
        client.show_instance(9)
    assert len(one_line(caught.value)) < 300


def test_an_instance_list_whose_token_never_changes_ends(serve: Callable[..., HostileServer]) -> None:
    server = serve(answer(200, b'{"instances": null, "next_token": 5}'))
    with pytest.raises(ApiError) as caught, client_for(server.url) as client:
        client.list_instances()
    assert "same page token" in one_line(caught.value)


# ------------------------------------------------------------------------------------------ redirects


@pytest.mark.parametrize("status", [302, 307])
@pytest.mark.parametrize("target_name", ["localhost", "127.0.0.1"])
def test_a_redirect_to_another_origin_never_carries_the_key(
    serve: Callable[..., HostileServer], status: int, target_name: str
) -> None:
    other = serve(answer(200, b'{"offers": [{"id": 5}]}'), name=target_name)

    def redirect(conn: Conn, req: Received) -> None:
        conn.send(_head(status, f"Location: {other.url}{req.path}\r\n", 0))

    first = serve(redirect)
    offers = search(client_for(first.url))
    assert isinstance(offers, list) and [o.id for o in offers] == [5]
    assert first.received[0].headers.get("authorization") == f"Bearer {KEY}"
    assert other.received and all("authorization" not in r.headers for r in other.received)
    assert all(KEY not in " ".join(r.headers.values()) + r.path for r in other.received)


def test_a_redirect_loop_is_one_api_error(serve: Callable[..., HostileServer]) -> None:
    def loop(conn: Conn, req: Received) -> None:
        conn.send(_head(302, f"Location: {server.url}{req.path}\r\n", 0))

    server = serve(loop)
    with pytest.raises(ApiError) as caught:
        search(client_for(server.url))
    assert "TooManyRedirects" in one_line(caught.value)


# ------------------------------------------------------------------------------------------ the CLI


def _offers_cli(url: str) -> tuple[int, list[str]]:
    result = runner.invoke(app, ["offers", "--profile", "4x3090", "--api-url", url, "--api-key", KEY])
    assert "Traceback" not in result.output
    assert KEY not in result.output
    return result.exit_code, [line for line in result.stderr.splitlines() if line.strip()]


@pytest.mark.parametrize(
    ("behaviour", "code"),
    [
        (answer(200, b"[1, 2]"), 7),
        (answer(200, b"\xff\xfe\xfd"), 7),
        (answer(200, b'{"offers": {"nested": null}}'), 7),
        (answer(401, b'{"error": "auth_error", "msg": "Invalid user key"}'), 6),
        (endless(b'{"offers": [', b'{"id": 1},' * 5000, limit=30_000_000), 7),
    ],
    ids=["list", "invalid-utf8", "wrong-shape", "refused-key", "huge-body"],
)
def test_cli_reports_hostile_answers_in_one_line(
    serve: Callable[..., HostileServer], behaviour: Behaviour, code: int
) -> None:
    server = serve(behaviour)
    exit_code, lines = _offers_cli(server.url)
    assert exit_code == code
    assert lines[0].startswith("error: ") and len(lines) <= 2


def test_cli_redirected_to_another_host_sends_no_key_there(serve: Callable[..., HostileServer]) -> None:
    other = serve(answer(401, b'{"error": "auth_error", "msg": "no key"}'), name="localhost")

    def redirect(conn: Conn, req: Received) -> None:
        conn.send(_head(307, f"Location: {other.url}{req.path}\r\n", 0))

    first = serve(redirect)
    exit_code, lines = _offers_cli(first.url)
    assert exit_code == 6 and lines[0].startswith("error: Vast.ai refused the API key")
    assert other.received and all("authorization" not in r.headers for r in other.received)


def test_auth_error_is_still_exit_6_via_the_client(serve: Callable[..., HostileServer]) -> None:
    server = serve(answer(401, b"\xff not json"))
    with pytest.raises(AuthError) as caught:
        search(client_for(server.url))
    assert caught.value.exit_code == 6
    one_line(caught.value)


# ------------------------------------------------------------------------------ the endpoint side
# `glmdeploy smoke --url` talks to an engine (or whatever answers in its place) with the endpoint key.


def _smoke_cli(url: str, *checks: str) -> tuple[int, dict[str, object]]:
    only = [arg for check in checks for arg in ("--only", check)]
    result = runner.invoke(
        app,
        ["smoke", "--url", f"{url}/v1", "--api-key", KEY, "--model", "m", "--timeout", "1", "--json", *only],
    )
    assert "Traceback" not in result.output
    assert KEY not in result.output
    return result.exit_code, json.loads(result.stdout)


def _details(report: dict[str, object]) -> list[str]:
    checks = report["checks"]
    assert isinstance(checks, list)
    return [str(c["detail"]) for c in checks]


@pytest.mark.parametrize(
    "body",
    [b"\xff\xfe\xfd", b"[1, 2]", b'{"choices": "none"}', b'{"choices": [null]}', b"[" * 200_000],
    ids=["invalid-utf8", "list", "choices-string", "choices-null", "deep"],
)
def test_smoke_reports_unreadable_chat_answers_as_failed_checks(
    serve: Callable[..., HostileServer], body: bytes
) -> None:
    server = serve(answer(200, body))
    exit_code, report = _smoke_cli(server.url, "chat")
    assert exit_code == 5
    assert all("\n" not in detail for detail in _details(report))


def test_smoke_never_follows_a_redirect_with_the_key(serve: Callable[..., HostileServer]) -> None:
    other = serve(answer(200, b'{"object": "list", "data": [{"id": "m"}]}'), name="localhost")

    def redirect(conn: Conn, req: Received) -> None:
        conn.send(_head(307, f"Location: {other.url}{req.path}\r\n", 0))

    first = serve(redirect)
    exit_code, _ = _smoke_cli(first.url, "models", "chat")
    assert exit_code == 5
    assert all("authorization" not in r.headers for r in other.received)


@pytest.mark.slow
def test_smoke_stops_reading_an_endless_body(serve: Callable[..., HostileServer]) -> None:
    server = serve(endless(b'{"choices": [', b'{"message": {}},' * 4000, limit=40_000_000))
    exit_code, _ = _smoke_cli(server.url, "chat")
    server.close()
    assert exit_code == 5
    assert max(server.sent) < 20_000_000


@pytest.mark.slow
def test_smoke_gives_up_on_a_stream_that_trickles_forever(serve: Callable[..., HostileServer]) -> None:
    head = _head(200, "Content-Type: text/event-stream\r\n") + b": keep-alive\n"
    server = serve(trickle(head, every=0.5), name="127.0.0.1")
    server_gave_up = threading.Timer(6.0, server.stop.set)
    server_gave_up.start()
    try:
        exit_code, _ = _smoke_cli(server.url, "stream")
    finally:
        server_gave_up.cancel()
    assert exit_code == 5
    # The smoke must hang up by itself, before the server ends the stream after 6 s.
    assert not server.stop.is_set()
