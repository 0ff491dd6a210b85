"""``bench`` against a server that closes idle keep-alive connections the way llama-server does (issue 10 §6).

llama-server serves HTTP with cpp-httplib, which closes a keep-alive connection that stayed idle for
``CPPHTTPLIB_KEEPALIVE_TIMEOUT_SECOND`` (5 s) without sending anything (ggml-org/llama.cpp
vendor/cpp-httplib/httplib.h @ 3ace5fa2, v0.38.0; tools/server/server-http.cpp @ aa6192d3 keeps the
default). When a client sends its next request on that connection just as the server closes it, the
request crosses the close: the client reads EOF ("Server disconnected without sending a response") or a
reset, and the server never read the request. With a real server that window is a few hundred
microseconds wide, so this server makes it deterministic: a request that arrives on a connection idle for
longer than ``CROSS_AFTER_S`` has the connection closed under it, unread (``fin``: EOF; ``rst``: reset).
A request on a new connection is always answered.

Real load tools do not report a healthy server as failing: bench must lose no request, run after run.
"""

from __future__ import annotations

import json
import select
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

GLMDEPLOY = [sys.executable, "-m", "glmdeploy"]
CROSS_AFTER_S = 0.05  # a lane idle this long has its next request cross the server's idle close
IDLE_CLOSE_S = 5.0  # cpp-httplib's keep-alive timeout: close a connection idle this long


@dataclass
class Stats:
    connections: int = 0
    answered: int = 0
    crossed: int = 0  # requests whose connection was closed under them, unread
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, what: str) -> None:
        with self.lock:
            setattr(self, what, getattr(self, what) + 1)


def _read_request(conn: socket.socket, buffer: bytes) -> tuple[bytes, bytes] | None:
    """(request, rest of the buffer), or None when the client closed."""
    while b"\r\n\r\n" not in buffer:
        chunk = conn.recv(65536)
        if not chunk:
            return None
        buffer += chunk
    head, _, rest = buffer.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(rest) < length:
        chunk = conn.recv(65536)
        if not chunk:
            return None
        rest += chunk
    return head + b"\r\n\r\n" + rest[:length], rest[length:]


def _sse_answer(request: bytes) -> bytes:
    if request.startswith(b"GET /v1/models"):
        body = json.dumps({"object": "list", "data": [{"id": "m", "object": "model"}]}).encode()
        return (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: keep-alive\r\n"
                b"Content-Length: %d\r\n\r\n" % len(body)) + body
    max_tokens = json.loads(request.partition(b"\r\n\r\n")[2]).get("max_tokens", 4)
    events = [{"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]}]
    events += [{"choices": [{"index": 0, "delta": {"content": " tok"}, "finish_reason": None}]}] * max_tokens
    events += [{"choices": [{"index": 0, "delta": {}, "finish_reason": "length"}]},
               {"choices": [], "usage": {"prompt_tokens": 8, "completion_tokens": max_tokens,
                                         "total_tokens": 8 + max_tokens}}]
    chunks = [b"data: " + json.dumps(e).encode() + b"\n\n" for e in events] + [b"data: [DONE]\n\n"]
    out = (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n"
           b"Connection: keep-alive\r\n\r\n")
    for c in chunks:
        out += b"%x\r\n%s\r\n" % (len(c), c)
    return out + b"0\r\n\r\n"


class KeepAliveClosingServer:
    def __init__(self, mode: str, *, cross_fresh: bool = False) -> None:
        self.mode = mode
        self.cross_fresh = cross_fresh  # close every connection unanswered, new ones too (a broken server)
        self.stats = Stats()
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}/v1"
        self.stopped = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.stopped.is_set():
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.stats.add("connections")
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _close_under(self, conn: socket.socket) -> None:
        """The idle close crossing a request: the request is not read, and no answer is sent."""
        self.stats.add("crossed")
        if self.mode == "rst":
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        else:
            conn.shutdown(socket.SHUT_WR)  # FIN first, so the client reads EOF, not a reset
            time.sleep(0.01)
        conn.close()

    def _serve(self, conn: socket.socket) -> None:
        buffer = b""
        first = True
        try:
            while True:
                if self.cross_fresh:
                    select.select([conn], [], [], IDLE_CLOSE_S)
                    self._close_under(conn)
                    return
                if not first and not buffer:
                    idle_since = time.monotonic()
                    readable, _, _ = select.select([conn], [], [], IDLE_CLOSE_S)
                    if not readable:  # idle for the whole keep-alive timeout: close, nothing in flight
                        conn.close()
                        return
                    if not conn.recv(1, socket.MSG_PEEK):  # the client closed its end (the run is over)
                        conn.close()
                        return
                    if time.monotonic() - idle_since >= CROSS_AFTER_S:
                        self._close_under(conn)
                        return
                got = _read_request(conn, buffer)
                if got is None:
                    conn.close()
                    return
                request, buffer = got
                conn.sendall(_sse_answer(request))
                self.stats.add("answered")
                first = False
        except OSError:
            conn.close()

    def close(self) -> None:
        self.stopped.set()
        self.listener.close()


@pytest.fixture
def server(request: pytest.FixtureRequest) -> Iterator[KeepAliveClosingServer]:
    srv = KeepAliveClosingServer(request.param)
    yield srv
    srv.close()


def bench(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*GLMDEPLOY, "bench", "--url", url, "--model", "m", "--input-len", "8", "--output-len", "4",
         "--max-concurrency", "4", "--json", *args],
        capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
    )


@pytest.mark.parametrize("server", ["fin", "rst"], indirect=True)
def test_bench_at_concurrency_4_loses_no_request_when_idle_connections_are_closed(
    server: KeepAliveClosingServer,
) -> None:
    for run in range(3):
        crossed_before = server.stats.crossed
        # 8 requests/s over 4 lanes: a lane idles ~0.5 s between requests, far past CROSS_AFTER_S.
        proc = bench(server.url, "--num-prompts", "24", "--request-rate", "8", "--seed", str(run))
        assert proc.returncode == 0, proc.stderr
        result = json.loads(proc.stdout)
        assert (result["completed"], result["failed"], result["errors"]) == (24, 0, []), proc.stderr
        crossed = server.stats.crossed - crossed_before
        assert crossed > 0, "the server closed no connection under a request: the test proved nothing"
        assert result["stale_connection_retries"] == crossed


def test_a_server_that_closes_new_connections_unanswered_still_fails() -> None:
    """Only a pooled connection is re-sent: a request on a new connection closed unanswered is a failure."""
    srv = KeepAliveClosingServer("fin", cross_fresh=True)
    try:
        proc = bench(srv.url, "--num-prompts", "4")
    finally:
        srv.close()
    assert proc.returncode == 5, proc.stderr
    assert "Server disconnected without sending a response" in proc.stderr
    assert srv.stats.crossed == 4  # each request sent once: no retry loop


def test_bench_says_how_many_requests_it_re_sent() -> None:
    """docs/troubleshooting.md: the human report's `Re-sent on a new connection: N` row, exit 0."""
    srv = KeepAliveClosingServer("fin")
    try:
        proc = subprocess.run(
            [*GLMDEPLOY, "bench", "--url", srv.url, "--model", "m", "--input-len", "8", "--output-len", "4",
             "--max-concurrency", "4", "--num-prompts", "12", "--request-rate", "8", "--seed", "0"],
            capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
        )
    finally:
        srv.close()
    assert proc.returncode == 0, proc.stderr
    assert srv.stats.crossed > 0, "the server closed no connection under a request: the test proved nothing"
    [row] = [line for line in proc.stdout.splitlines() if "Re-sent on a new connection:" in line]
    assert row.split()[-1] == str(srv.stats.crossed), proc.stdout
