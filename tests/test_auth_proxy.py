"""The nginx auth proxy that fronts engines without their own API key (LightLLM).

Runs the real nginx (Debian's nginx-light; .ci/run installs it) with the exact server block the
onstart script writes, in front of a stub upstream that streams SSE slowly.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from glmdeploy.onstart import proxy_config_snippet
from waits import wait_until

NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
pytestmark = pytest.mark.skipif(NGINX is None, reason="nginx is not installed (.ci/run installs nginx-light)")

KEY = "a1" * 32
CHUNK_GAP = 0.25
TEMP_KINDS = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class SlowSSE(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        body = b"ok" if self.path == "/health" else b'{"object":"list","data":[]}'
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for i in range(3):
            data = f"data: {{\"i\": {i}}}\n\n".encode()
            self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
            self.wfile.flush()
            time.sleep(CHUNK_GAP)
        done = b"data: [DONE]\n\n"
        self.wfile.write(f"{len(done):x}\r\n".encode() + done + b"\r\n0\r\n\r\n")


@pytest.fixture
def proxy(tmp_path: Path) -> Iterator[str]:
    upstream = ThreadingHTTPServer(("127.0.0.1", free_port()), SlowSSE)
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    listen = free_port()
    conf = tmp_path / "glmdeploy.conf"
    script = proxy_config_snippet(listen, upstream.server_address[1], str(conf))
    subprocess.run(["bash", "-c", script], env={**os.environ, "GLM_API_KEY": KEY}, check=True)
    assert conf.stat().st_mode & 0o777 == 0o600
    assert KEY in conf.read_text() and KEY not in script
    user = "user root;" if os.geteuid() == 0 else ""
    (tmp_path / "nginx.conf").write_text(
        f"{user}\nworker_processes 1;\npid {tmp_path}/nginx.pid;\nerror_log {tmp_path}/error.log;\n"
        "events {}\nhttp {\n  access_log off;\n"
        + "".join(f"  {kind}_temp_path {tmp_path}/{kind};\n" for kind in TEMP_KINDS)
        + f"  include {conf};\n}}\n"
    )
    proc = subprocess.Popen([NGINX, "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf"), "-g", "daemon off;"])
    url = f"http://127.0.0.1:{listen}"

    def answers() -> bool:
        try:
            httpx.get(url + "/health", timeout=5)
        except httpx.TransportError:
            return proc.poll() is not None  # nginx exited: stop waiting, the test fails on its own
        return True

    wait_until(answers, "nginx to answer", interval=0.05)
    try:
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        upstream.shutdown()


def test_requests_without_or_with_a_wrong_key_get_401(proxy: str) -> None:
    wrong = ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Bearer {KEY}x"},
             {"Authorization": f"Bearer {KEY.upper()}"})
    for headers in wrong:
        r = httpx.post(proxy + "/v1/chat/completions", json={}, headers=headers, timeout=5)
        assert r.status_code == 401
        assert r.json() == {"error": "Unauthorized"}
    assert httpx.get(proxy + "/v1/models", timeout=5).status_code == 401


def test_health_stays_open_and_the_key_opens_everything_else(proxy: str) -> None:
    assert httpx.get(proxy + "/health", timeout=5).status_code == 200
    r = httpx.get(proxy + "/v1/models", headers={"Authorization": f"bearer {KEY}"}, timeout=5)
    assert r.status_code == 200


def test_sse_streams_through_unbuffered(proxy: str) -> None:
    arrivals: list[float] = []
    start = time.perf_counter()
    with httpx.stream(
        "POST", proxy + "/v1/chat/completions", json={"stream": True},
        headers={"Authorization": f"Bearer {KEY}"}, timeout=10,
    ) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if line.startswith("data:"):
                arrivals.append(time.perf_counter() - start)
    assert len(arrivals) == 4
    # Chunk by chunk: the first event arrives well before the upstream has finished sending.
    assert arrivals[-1] - arrivals[0] >= 2 * CHUNK_GAP * 0.8
