"""The onstart script's TLS, for real: openssl makes the key pair, nginx terminates TLS, glmdeploy pins it.

Runs the exact shell lines the script runs (``tls_snippet`` with the real openssl, ``proxy_config_snippet``
with ``tls=True`` under the real nginx), in front of a stub upstream that records what reaches it.
"""

from __future__ import annotations

import os
import shutil
import socket
import ssl
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from glmdeploy.onstart import TLS_DIR, proxy_config_snippet, tls_snippet
from glmdeploy.tls import (
    MISMATCH_MESSAGE,
    CertificateMismatch,
    EndpointTrust,
    PlainHttpAnswer,
    fingerprint_in_log,
    pin_certificate,
    pinned_client,
)
from waits import wait_until

NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
OPENSSL = shutil.which("openssl")
pytestmark = pytest.mark.skipif(NGINX is None or OPENSSL is None, reason="needs nginx and openssl (.ci/run)")

KEY = "b2" * 32
TEMP_KINDS = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Recorder(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    seen: list[str] = []

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        type(self).seen.append(f"{self.path} {self.headers.get('Authorization', '')}")
        body = b'{"object":"list","data":[{"id":"glm"}]}'
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@dataclass
class Host:
    url: str
    plain_url: str  # the upstream itself: a plain-http server
    log: str  # what the script printed (the container log)
    tls_dir: Path
    seen: list[str]


@pytest.fixture
def host(tmp_path: Path) -> Iterator[Host]:
    Recorder.seen = []
    upstream = ThreadingHTTPServer(("127.0.0.1", free_port()), Recorder)
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    listen = free_port()
    tls_dir, conf = tmp_path / "tls", tmp_path / "glmdeploy.conf"
    script = "\n".join([tls_snippet(), proxy_config_snippet(listen, upstream.server_address[1], str(conf), tls=True)])
    script = script.replace(TLS_DIR, str(tls_dir))
    env = {**os.environ, "GLM_API_KEY": KEY, "PUBLIC_IPADDR": "127.0.0.1"}
    done = subprocess.run(["bash", "-c", "set -u\n" + script], env=env, capture_output=True, text=True, check=True)
    user = "user root;" if os.geteuid() == 0 else ""
    (tmp_path / "nginx.conf").write_text(
        f"{user}\nworker_processes 1;\npid {tmp_path}/nginx.pid;\nerror_log {tmp_path}/error.log;\n"
        "events {}\nhttp {\n  access_log off;\n"
        + "".join(f"  {kind}_temp_path {tmp_path}/{kind};\n" for kind in TEMP_KINDS)
        + f"  include {conf};\n}}\n"
    )
    proc = subprocess.Popen([NGINX, "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf"), "-g", "daemon off;"])

    def listening() -> bool:
        try:
            socket.create_connection(("127.0.0.1", listen), timeout=5).close()
        except OSError:
            return proc.poll() is not None
        return True

    wait_until(listening, "nginx to listen", interval=0.05)
    try:
        yield Host(f"https://127.0.0.1:{listen}", f"https://127.0.0.1:{upstream.server_address[1]}",
                   done.stdout + done.stderr, tls_dir, Recorder.seen)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        upstream.shutdown()


def test_the_host_logs_one_fingerprint_line_and_keeps_its_key_private(host: Host) -> None:
    lines = [line for line in host.log.splitlines() if line.strip()]
    assert len(lines) == 1, host.log
    fingerprint = fingerprint_in_log(lines)
    assert fingerprint is not None and KEY not in host.log and "PRIVATE" not in host.log
    assert (host.tls_dir / "key.pem").stat().st_mode & 0o777 == 0o600
    assert host.tls_dir.stat().st_mode & 0o777 == 0o700
    cert = subprocess.run([OPENSSL or "openssl", "x509", "-in", str(host.tls_dir / "cert.pem"), "-noout", "-text"],
                          capture_output=True, text=True, check=True).stdout
    assert "IP Address:127.0.0.1" in cert and "CA:FALSE" in cert and "ASN1 OID: prime256v1" in cert


def test_pinned_client_talks_to_the_host_that_logged_the_fingerprint(host: Host) -> None:
    fingerprint = fingerprint_in_log(host.log.splitlines())
    assert fingerprint is not None
    with pinned_client(host.url, EndpointTrust(fingerprint=fingerprint)) as http:
        r = http.get(host.url + "/v1/models", headers={"Authorization": f"Bearer {KEY}"})
    assert r.status_code == 200 and host.seen == [f"/v1/models Bearer {KEY}"]
    # The certificate also verifies the ordinary way (what `env`'s CA bundle gives the OpenAI SDK and curl).
    ctx = ssl.create_default_context(cadata=pin_certificate(host.url, fingerprint))
    with httpx.Client(verify=ctx) as plain:
        assert plain.get(host.url + "/health").status_code == 200


def test_a_different_certificate_is_refused_before_anything_is_sent(host: Host) -> None:
    with pytest.raises(CertificateMismatch, match=MISMATCH_MESSAGE):
        pinned_client(host.url, EndpointTrust(fingerprint="00" * 32))
    assert host.seen == []


def test_a_plain_http_answer_is_refused_and_the_key_never_sent(host: Host) -> None:
    fingerprint = fingerprint_in_log(host.log.splitlines())
    assert fingerprint is not None
    with pytest.raises(PlainHttpAnswer, match="plain http"):
        pinned_client(host.plain_url, EndpointTrust(fingerprint=fingerprint))
    assert all(KEY not in seen for seen in host.seen)
