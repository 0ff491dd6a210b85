"""The pinned-TLS helper against a simulated host's TLS server: pins, mismatches, plain http, redirects."""

from __future__ import annotations

import socket
import ssl
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from typer.testing import CliRunner

from glmdeploy.cli import app
from glmdeploy.errors import UsageError
from glmdeploy.sandbox.engines.tls import HostCertificate, generate
from glmdeploy.tls import (
    MISMATCH_MESSAGE,
    CertificateMismatch,
    EndpointTrust,
    PlainHttpAnswer,
    colon_form,
    fingerprint_in_log,
    normalize_fingerprint,
    pinned_client,
)

KEY = "c3" * 32


class Recorder(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    seen: list[str]

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        self.server.seen.append(f"{self.path} {self.headers.get('Authorization', '')}")  # type: ignore[attr-defined]
        if self.path == "/redirect":
            self.send_response(307)
            self.send_header("Location", "https://example.invalid/steal")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body = b"{}"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: object, client_address: object) -> None:
        pass  # a client that drops the connection at the handshake (the point of several tests)


def serve(cert: HostCertificate | None) -> Iterator[tuple[str, list[str]]]:
    server = QuietServer(("127.0.0.1", 0), Recorder)
    server.seen = []  # type: ignore[attr-defined]
    if cert is not None:
        ctx = cert.server_context()
        server.socket = ctx.wrap_socket(server.socket, server_side=True, do_handshake_on_connect=False)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        # https:// either way: the plain server is what answers where TLS was expected.
        yield f"https://127.0.0.1:{server.server_address[1]}", server.seen  # type: ignore[attr-defined]
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def host_cert() -> HostCertificate:
    return generate("127.0.0.1")


@pytest.fixture
def tls_host(host_cert: HostCertificate) -> Iterator[tuple[str, list[str]]]:
    yield from serve(host_cert)


@pytest.fixture
def plain_host() -> Iterator[tuple[str, list[str]]]:
    yield from serve(None)


def test_the_log_line_is_read_back_as_the_fingerprint(host_cert: HostCertificate) -> None:
    lines = ["INFO something", host_cert.log_line(), "INFO more"]
    assert fingerprint_in_log(lines) == host_cert.fingerprint
    assert fingerprint_in_log(["glmdeploy-tls: certificate sha256 fingerprint AB:CD"]) is None
    # A restarted container prints a new line: the last one counts.
    other = generate("127.0.0.1")
    assert fingerprint_in_log([host_cert.log_line(), other.log_line()]) == other.fingerprint


def test_fingerprints_are_accepted_in_the_usual_spellings_and_nothing_else(host_cert: HostCertificate) -> None:
    fp = host_cert.fingerprint
    for spelling in (fp, fp.upper(), colon_form(fp), f"sha256:{fp}", f"  {colon_form(fp)}\n"):
        assert normalize_fingerprint(spelling) == fp
    for bad in ("", "ab" * 31, "zz" * 32, fp + "00"):
        with pytest.raises(UsageError, match="not a SHA-256 fingerprint"):
            normalize_fingerprint(bad)


def test_the_pinned_certificate_is_accepted(tls_host: tuple[str, list[str]], host_cert: HostCertificate) -> None:
    url, seen = tls_host
    with pinned_client(url, EndpointTrust(fingerprint=host_cert.fingerprint)) as http:
        assert http.get(url + "/v1/models", headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
    assert seen == [f"/v1/models Bearer {KEY}"]


def test_another_certificate_is_refused_before_any_request(tls_host: tuple[str, list[str]]) -> None:
    url, seen = tls_host
    with pytest.raises(CertificateMismatch, match=MISMATCH_MESSAGE) as refused:
        pinned_client(url, EndpointTrust(fingerprint=generate("127.0.0.1").fingerprint))
    assert refused.value.exit_code == 9
    assert seen == []


def test_a_stored_certificate_from_another_host_cannot_be_used_either(
    tls_host: tuple[str, list[str]], host_cert: HostCertificate
) -> None:
    """Once pinned, the client trusts only that certificate: a swapped server fails the handshake."""
    url, seen = tls_host
    impostor = generate("127.0.0.1")
    import httpx

    from glmdeploy.tls import pinned_context

    with httpx.Client(verify=pinned_context(impostor.cert_pem.decode())) as http, pytest.raises(httpx.ConnectError):
        http.get(url + "/v1/models", headers={"Authorization": f"Bearer {KEY}"})
    assert seen == []


def test_plain_http_where_tls_was_expected_is_refused(
    plain_host: tuple[str, list[str]], host_cert: HostCertificate
) -> None:
    url, seen = plain_host
    with pytest.raises(PlainHttpAnswer, match="plain http where TLS was expected") as refused:
        pinned_client(url, EndpointTrust(fingerprint=host_cert.fingerprint))
    assert refused.value.exit_code == 9 and seen == []


def test_a_redirect_is_not_followed_with_the_key(tls_host: tuple[str, list[str]], host_cert: HostCertificate) -> None:
    url, seen = tls_host
    with pinned_client(url, EndpointTrust(fingerprint=host_cert.fingerprint)) as http:
        r = http.get(url + "/redirect", headers={"Authorization": f"Bearer {KEY}"})
    assert r.status_code == 307 and seen == [f"/redirect Bearer {KEY}"]


def test_pin_and_ca_cert_belong_to_https_url_targets() -> None:
    runner = CliRunner()
    for args, message in (
        (["smoke", "--pin", "ab" * 32], "go with --url"),
        (["smoke", "--url", "http://127.0.0.1:9/v1", "--pin", "ab" * 32], "need an https:// --url"),
        (["bench", "--url", "https://127.0.0.1:9/v1", "--pin", "nope"], "not a SHA-256 fingerprint"),
        (["bench", "--url", "https://127.0.0.1:9/v1", "--ca-cert", "/nonexistent.pem"], "no such file"),
    ):
        result = runner.invoke(app, args)
        assert result.exit_code == 2, result.output
        assert message in result.output


def test_the_certificate_verifies_the_ordinary_way_for_its_ip(tls_host: tuple[str, list[str]],
                                                               host_cert: HostCertificate) -> None:
    """What env's CA bundle relies on: the IP SAN lets httpx/openai/curl verify it with hostname checks on."""
    url, _ = tls_host
    ctx = ssl.create_default_context(cadata=host_cert.cert_pem.decode())
    host, port = url.removeprefix("https://").split(":")
    with socket.create_connection((host, int(port))) as raw, ctx.wrap_socket(raw, server_hostname=host) as tls:
        assert tls.version() in ("TLSv1.2", "TLSv1.3")


def test_a_proxy_that_cannot_start_is_a_launch_failure_not_a_timeout() -> None:
    from glmdeploy.engines import get_engine

    for line in ("glmdeploy: openssl could not generate the TLS certificate", "glmdeploy: nginx failed to start",
                 "glmdeploy: could not install nginx for the auth proxy"):
        for kind in ("sglang", "vllm", "lightllm"):
            sig = get_engine(kind).classify_failure(line)
            assert sig is not None and sig.kind == "proxy_failed", (kind, line)


def _record(endpoint: str, fingerprint: str) -> str:
    from glmdeploy.profiles import load_profile
    from glmdeploy.state import StateStore

    profile = load_profile("2x5090")
    with StateStore.open() as store:
        d = store.create(profile=profile.name, profile_snapshot=profile.model_dump(mode="json"),
                         endpoint_api_key=KEY, model="glm")
        store.update(d.id, status="ready", endpoint=endpoint + "/v1", tls_fingerprint=fingerprint)
    return d.name


def test_smoke_bench_and_chat_of_a_deployment_refuse_another_certificate_with_exit_9(
    tls_host: tuple[str, list[str]],
) -> None:
    url, seen = tls_host
    name = _record(url, generate("127.0.0.1").fingerprint)  # the host "reported" another certificate
    runner = CliRunner()
    for args in (["smoke", name], ["bench", name, "--num-prompts", "1"], ["chat", name, "-m", "hi"], ["chat", name]):
        result = runner.invoke(app, args)
        assert result.exit_code == 9, result.output
        assert MISMATCH_MESSAGE in result.output and KEY not in result.output
    assert seen == []


def test_smoke_and_bench_of_a_deployment_answered_in_plain_http_exit_9(
    plain_host: tuple[str, list[str]], host_cert: HostCertificate
) -> None:
    """docs/troubleshooting.md: "... answered in plain http where TLS was expected; refused, the key was not
    sent" (exit 9), through the CLI: a plain web server on the port the deployment's TLS proxy should hold."""
    url, seen = plain_host
    name = _record(url, host_cert.fingerprint)
    runner = CliRunner()
    for args in (["smoke", name], ["bench", name, "--num-prompts", "1"]):
        result = runner.invoke(app, args)
        assert result.exit_code == 9, result.output
        errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1, result.stderr
        assert "answered in plain http where TLS was expected; refused, the key was not sent" in errors[0]
        assert KEY not in result.output
    assert seen == []


def test_env_writes_a_public_bundle_of_the_system_cas_and_the_pinned_certificate(
    tls_host: tuple[str, list[str]], host_cert: HostCertificate
) -> None:
    import os

    from glmdeploy.ca_bundle import system_ca_file
    from glmdeploy.state import StateStore

    url, _ = tls_host
    name = _record(url, host_cert.fingerprint)
    with StateStore.open() as store:
        d = store.resolve(name)
        store.update(d.id, tls_certificate=host_cert.cert_pem.decode())
    out = CliRunner().invoke(app, ["env", name]).stdout
    exports = dict(line.removeprefix("export ").split("=", 1) for line in out.splitlines())
    assert exports["OPENAI_BASE_URL"] == url + "/v1"
    bundle = exports["SSL_CERT_FILE"]
    assert exports["REQUESTS_CA_BUNDLE"] == exports["CURL_CA_BUNDLE"] == bundle
    text = open(bundle).read()
    assert os.stat(bundle).st_mode & 0o777 == 0o644 and KEY not in text and "PRIVATE" not in text
    assert host_cert.cert_pem.decode().strip() in text
    system = system_ca_file()
    assert system is not None and open(system).read().strip()[:200] in text
    insecure = CliRunner().invoke(app, ["env", name, "--insecure-http"])
    assert "export OPENAI_BASE_URL=http://127.0.0.1:" in insecure.stdout and "SSL_CERT_FILE" not in insecure.stdout
