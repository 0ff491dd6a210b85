"""``smoke --url`` against dead or wrong targets (issue 10 §6), through the CLI.

- a port that accepts connections and never answers: every check honours its budget (``--timeout``),
  health included, and the run stops after the first: one line, exit 7;
- a closed port: one line, exit 7, the other checks not run (not a table of eight failures);
- a plain web server (404 on /health and /v1/models): "not an OpenAI-compatible server", never
  "the key is not enforced".
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from glmdeploy.cli import app
from glmdeploy.smoke import CHECK_NAMES

EXIT_SMOKE_FAILED = 5
EXIT_UNREACHABLE = 7


def smoke(*args: str) -> Any:
    return CliRunner().invoke(app, ["smoke", *args])


def one_error_line(result: Any) -> str:
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port whose kernel completes the handshake (listen backlog) but whose server never reads or answers."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        yield listener.getsockname()[1]


@pytest.fixture
def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def plain_web_server(tmp_path: Path) -> Iterator[str]:
    """What `python -m http.server` is: 404 for every path that is not a file, 501 for POST."""
    (tmp_path / "index.html").write_text("<h1>hello</h1>")

    class Quiet(SimpleHTTPRequestHandler):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, directory=str(tmp_path), **kwargs)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.mark.parametrize("check", CHECK_NAMES)
def test_every_check_honours_the_timeout_against_a_server_that_never_answers(silent_port: int, check: str) -> None:
    started = time.monotonic()
    result = smoke("--url", f"http://127.0.0.1:{silent_port}", "--api-key", "k", "--model", "m",
                   "--only", check, "--timeout", "0.5")
    elapsed = time.monotonic() - started
    assert result.exit_code == EXIT_UNREACHABLE, result.output
    assert "does not respond" in one_error_line(result)
    assert elapsed < 5, elapsed  # one budget of 0.5 s, with room for a loaded machine; before: 25 s and more


def test_a_silent_server_stops_the_run_after_the_first_check(silent_port: int) -> None:
    started = time.monotonic()
    result = smoke("--url", f"http://127.0.0.1:{silent_port}", "--api-key", "k", "--timeout", "0.5", "--json")
    elapsed = time.monotonic() - started
    assert result.exit_code == EXIT_UNREACHABLE
    assert elapsed < 5, elapsed  # was ~16 minutes at the default timeout: every check waited out its own
    data = json.loads(result.stdout)
    first, *rest = data["checks"]
    assert first["name"] == "health" and "no answer" in first["detail"]
    assert all(c["detail"].startswith("not run: ") for c in rest)
    assert "does not respond" in data["unreachable"]


def test_a_closed_port_is_one_line_and_exit_7(closed_port: int) -> None:
    result = smoke("--url", f"http://127.0.0.1:{closed_port}", "--api-key", "k")
    assert result.exit_code == EXIT_UNREACHABLE
    line = one_error_line(result)
    assert "health could not connect" in line and "Connection refused" in line
    assert result.stdout == ""  # no table of checks that were never run


def test_a_plain_web_server_is_not_openai_compatible_not_an_auth_failure(plain_web_server: str) -> None:
    result = smoke("--url", plain_web_server, "--api-key", "k")
    assert result.exit_code == EXIT_SMOKE_FAILED
    line = one_error_line(result)
    assert "not an OpenAI-compatible server" in line
    assert "not enforced" not in result.output


def test_the_auth_check_alone_reads_404_as_the_wrong_server(plain_web_server: str) -> None:
    result = smoke("--url", plain_web_server, "--api-key", "k", "--only", "auth", "--json")
    assert result.exit_code == EXIT_SMOKE_FAILED
    [auth] = json.loads(result.stdout)["checks"]
    assert auth["detail"].startswith("not an OpenAI-compatible endpoint: GET /v1/models without a key: 404")
    assert "not enforced" not in result.output


@pytest.fixture
def answers_health_then_dies() -> Iterator[int]:
    """A server that answers one request (``GET /health`` 200) and stops listening before it does: the
    next connection is refused, as when an engine dies mid-run after its health check passed."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    port = int(listener.getsockname()[1])

    def serve() -> None:
        conn, _ = listener.accept()
        listener.close()  # before answering: once the client has the answer, the port refuses
        with conn:
            request = b""
            while b"\r\n\r\n" not in request:
                chunk = conn.recv(4096)
                if not chunk:
                    return
                request += chunk
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield port
    if thread.is_alive():  # never connected to: unblock accept()
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            pass
    thread.join(timeout=5)
    listener.close()


def test_a_connection_lost_after_health_passed_is_a_failed_check_not_unreachable(answers_health_then_dies: int) -> None:
    # Issue 9 item 5 against issue 10 item 6: exit 7 is for a target that cannot be reached at all; a
    # server that answered and then refuses (its engine died) fails the check that found it (exit 5).
    result = smoke("--url", f"http://127.0.0.1:{answers_health_then_dies}", "--api-key", "k", "--model", "m",
                   "--only", "health,chat,stream", "--json")
    assert result.exit_code == EXIT_SMOKE_FAILED, result.output
    [line] = [line for line in result.stderr.splitlines() if line.startswith("error: ")]  # after progress lines
    assert line.startswith("error: smoke checks failed: chat (chat could not connect after the server had answered")
    assert "Connection refused" in line and "not run: stream" in line, line
    data = json.loads(result.stdout)
    assert "unreachable" not in data and data["connection_lost"].startswith("chat could not connect"), data
    health, chat, stream = data["checks"]
    assert health["status"] == "passed" and chat["status"] == "failed", data
    assert stream["detail"] == f"not run: {data['connection_lost']}", data
