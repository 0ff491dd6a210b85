"""``bench --url`` at a port where nothing listens (issue 10 §6): one line and exit 7, with or without --model."""

from __future__ import annotations

import socket

import pytest
from typer.testing import CliRunner

from glmdeploy.cli import app


@pytest.fixture
def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize("model", [["--model", "m"], []])
def test_bench_at_a_closed_port_is_one_line_and_exit_7(closed_port: int, model: list[str]) -> None:
    result = CliRunner().invoke(app, ["bench", "--url", f"http://127.0.0.1:{closed_port}/v1", *model,
                                      "--num-prompts", "3"])
    assert result.exit_code == 7, result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: cannot reach http://127.0.0.1:{closed_port}/v1: "), lines
    assert result.stdout == ""


def test_bench_where_every_request_is_refused_exits_5(tmp_path: object) -> None:
    """A server that answers, but refuses every request (a plain web server: 501 for POST), is exit 5."""
    import threading
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        result = CliRunner().invoke(app, ["bench", "--url", f"http://127.0.0.1:{httpd.server_address[1]}/v1",
                                          "--model", "m", "--num-prompts", "3"])
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert result.exit_code == 5, result.output
    assert "error: every request failed (HTTP 501" in result.stderr
