"""The gateway guard's per-replica forwarder: SMG reaches each replica only through TLS pinned to its certificate.

SMG 1.13.0 cannot verify a replica's self-signed certificate, so the guard gives it a loopback URL per
replica and makes the hop that leaves the machine itself. These tests drive the guard's ASGI app (public
and private listener in one, told apart by the local port like uvicorn's ``scope["server"]``) against a
simulated host's TLS server.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from typing import Any

import httpx
import pytest

from glmdeploy.gateway_guard import FORWARDERS_PATH, Forwarders, _app, _dispatch, _forwarder_app
from glmdeploy.sandbox.engines.tls import HostCertificate, generate
from test_tls_pin import QuietServer, serve

GATEWAY_KEY = "9a" * 32
REPLICA_KEY = "5e" * 32
PUBLIC = "http://127.0.0.1:41000"
FORWARDER_PORT = 41001


@pytest.fixture(scope="module")
def host_cert() -> HostCertificate:
    return generate("127.0.0.1")


@pytest.fixture
def replica(host_cert: HostCertificate) -> Iterator[tuple[str, list[str]]]:
    yield from serve(host_cert)


def _guard() -> Any:
    forwarders = Forwarders(FORWARDER_PORT)
    # Upstream SMG is never reached in these tests: nothing listens there.
    public = _app("http://127.0.0.1:9", GATEWAY_KEY, {"pid": 0}, forwarders)
    return _dispatch(public, _forwarder_app(forwarders), FORWARDER_PORT)


async def _pin_and_get(certificate_pem: str, replica_url: str, *, key: str = GATEWAY_KEY) -> tuple[int, int | None]:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=_guard())) as http:
        pinned = await http.post(PUBLIC + FORWARDERS_PATH, headers={"Authorization": f"Bearer {key}"},
                                 json={"index": 3, "url": replica_url, "certificate_pem": certificate_pem})
        if pinned.status_code != 200:
            return pinned.status_code, None
        worker_url = pinned.json()["worker_url"]
        assert worker_url == f"http://127.0.0.1:{FORWARDER_PORT}/replica/3"
        got = await http.get(worker_url + "/v1/models", headers={"Authorization": f"Bearer {REPLICA_KEY}"})
        return pinned.status_code, got.status_code


def test_a_replica_is_reached_over_tls_pinned_to_its_certificate_with_its_own_key(
    replica: tuple[str, list[str]], host_cert: HostCertificate
) -> None:
    url, seen = replica
    assert asyncio.run(_pin_and_get(host_cert.cert_pem.decode(), url)) == (200, 200)
    assert seen == [f"/v1/models Bearer {REPLICA_KEY}"]


def test_a_replica_presenting_another_certificate_gets_nothing(replica: tuple[str, list[str]]) -> None:
    url, seen = replica
    impostor = generate("127.0.0.1")
    assert asyncio.run(_pin_and_get(impostor.cert_pem.decode(), url)) == (200, 502)
    assert seen == []  # the handshake failed before any request (and its key) left


def test_only_the_gateway_key_pins_a_replica_and_only_over_https(
    replica: tuple[str, list[str]], host_cert: HostCertificate
) -> None:
    url, seen = replica
    assert asyncio.run(_pin_and_get(host_cert.cert_pem.decode(), url, key=REPLICA_KEY)) == (401, None)
    plain = "http://" + url.removeprefix("https://")
    assert asyncio.run(_pin_and_get(host_cert.cert_pem.decode(), plain)) == (400, None)
    assert seen == []


def test_the_forwarder_is_not_reachable_through_the_public_port(
    replica: tuple[str, list[str]], host_cert: HostCertificate
) -> None:
    url, seen = replica

    async def go() -> int:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=_guard())) as http:
            await http.post(PUBLIC + FORWARDERS_PATH, headers={"Authorization": f"Bearer {GATEWAY_KEY}"},
                            json={"index": 3, "url": url, "certificate_pem": host_cert.cert_pem.decode()})
            r = await http.get(PUBLIC + "/replica/3/v1/models", headers={"Authorization": f"Bearer {REPLICA_KEY}"})
            return r.status_code

    assert asyncio.run(go()) == 401  # the public port wants the gateway key and forwards to SMG only
    assert seen == []


class _SseHost(BaseHTTPRequestHandler):
    """Sends one SSE event, then the next only once the test has read the first through the forwarder."""

    protocol_version = "HTTP/1.0"  # close-delimited body: the stream ends when the connection does
    second: threading.Event

    def log_message(self, *args: object) -> None:
        pass

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        self.wfile.write(b'data: {"n": 1}\n\n')
        self.wfile.flush()
        # False if the test never saw the first event before this times out (a buffering forwarder).
        self.server.released = self.server.second.wait(30)  # type: ignore[attr-defined]
        self.wfile.write(b"data: [DONE]\n\n")
        self.wfile.flush()


def test_sse_streams_through_the_forwarder_as_it_is_produced(host_cert: HostCertificate) -> None:
    import socket

    import uvicorn

    host = QuietServer(("127.0.0.1", 0), _SseHost)
    host.second = threading.Event()  # type: ignore[attr-defined]
    host.socket = host_cert.server_context().wrap_socket(host.socket, server_side=True,
                                                         do_handshake_on_connect=False)
    threading.Thread(target=host.serve_forever, daemon=True).start()
    public, private = socket.socket(), socket.socket()
    public.bind(("127.0.0.1", 0))
    private.bind(("127.0.0.1", 0))
    public.listen(8)
    private.listen(8)
    forwarders = Forwarders(private.getsockname()[1])
    app = _dispatch(_app("http://127.0.0.1:9", GATEWAY_KEY, {"pid": 0}, forwarders), _forwarder_app(forwarders),
                    forwarders.port)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    threading.Thread(target=server.run, kwargs={"sockets": [public, private]}, daemon=True).start()
    gateway = f"http://127.0.0.1:{public.getsockname()[1]}"
    try:
        with httpx.Client(trust_env=False, timeout=30) as http:
            for _ in range(300):  # until uvicorn answers (its own start, not a clock race)
                try:
                    http.get(gateway + "/nothing")
                    break
                except httpx.TransportError:
                    threading.Event().wait(0.05)
            pinned = http.post(gateway + FORWARDERS_PATH, headers={"Authorization": f"Bearer {GATEWAY_KEY}"},
                               json={"index": 0, "url": f"https://127.0.0.1:{host.server_address[1]}",
                                     "certificate_pem": host_cert.cert_pem.decode()})
            worker = pinned.json()["worker_url"]
            with http.stream("POST", worker + "/v1/chat/completions", json={"stream": True},
                             headers={"Authorization": f"Bearer {REPLICA_KEY}"}) as r:
                assert r.status_code == 200
                lines = r.iter_lines()
                first = next(line for line in lines if line)
                assert first == 'data: {"n": 1}'  # arrived while the host still holds back the rest
                host.second.set()  # type: ignore[attr-defined]
                assert [line for line in lines if line] == ["data: [DONE]"]
        assert host.released  # type: ignore[attr-defined]
    finally:
        host.second.set()  # type: ignore[attr-defined]
        server.should_exit = True
        host.shutdown()
        host.server_close()
