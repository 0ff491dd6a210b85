"""The endpoint's TLS pin: one helper every client of a deployment goes through.

The onstart script has the host generate a key pair and a self-signed certificate, and print the
certificate's SHA-256 fingerprint on one marked line of the container log (``FINGERPRINT_MARKER``).
glmdeploy reads that line through the authenticated Vast API — a channel a man in the middle of the
endpoint cannot touch — and from then on talks to the endpoint only over a TLS connection that
presents exactly that certificate:

- ``pin_certificate`` opens one TLS handshake, sends nothing, and compares the presented certificate's
  SHA-256 with the pin. A different certificate is ``CertificateMismatch``; a server that answers in
  plain http is ``PlainHttpAnswer``. Both carry their own exit code and the key is never sent.
- ``pinned_client`` then returns an httpx client whose only trust anchor is that certificate (a server
  without its private key fails the handshake before any request leaves), that never follows redirects
  and ignores proxy variables.

docs/tls.md explains the design and the threat it does not answer (a compromised host).
"""

from __future__ import annotations

import hashlib
import re
import socket
import ssl
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from glmdeploy.errors import EXIT_TLS_REFUSED, GlmdeployError, UsageError

if TYPE_CHECKING:
    import httpx

    from glmdeploy.state import Deployment

# The one marked line the host prints (onstart.py); the fingerprint is public, nothing secret is on it.
FINGERPRINT_MARKER = "glmdeploy-tls: certificate sha256 fingerprint"
_LINE = re.compile(re.escape(FINGERPRINT_MARKER) + r"[ =]+((?:[0-9A-Fa-f]{2}:){31}[0-9A-Fa-f]{2})\s*$")
_HEX64 = re.compile(r"[0-9a-f]{64}")
MISMATCH_MESSAGE = "the endpoint's certificate does not match the one its host reported"


class EndpointNotTrusted(GlmdeployError):
    """The endpoint did not prove it is the server the host reported; nothing was sent with the key."""

    exit_code = EXIT_TLS_REFUSED
    code = "tls_refused"


class CertificateMismatch(EndpointNotTrusted):
    code = "certificate_mismatch"


class PlainHttpAnswer(EndpointNotTrusted):
    code = "plain_http"


def normalize_fingerprint(text: str) -> str:
    """``AB:CD:...``, ``sha256:abcd...`` or 64 hex digits -> 64 lowercase hex digits; UsageError otherwise."""
    value = text.strip().lower().removeprefix("sha256:").removeprefix("sha256=").replace(":", "")
    if not _HEX64.fullmatch(value):
        raise UsageError(f"not a SHA-256 fingerprint: {text[:80]!r}",
                         hint="64 hex digits, with or without colons (openssl x509 -noout -fingerprint -sha256)")
    return value


def colon_form(fingerprint: str) -> str:
    """``AB:CD:...``, as openssl prints it."""
    return ":".join(fingerprint[i : i + 2] for i in range(0, len(fingerprint), 2)).upper()


def fingerprint_of(der: bytes) -> str:
    return hashlib.sha256(der).hexdigest()


def fingerprint_in_log(lines: Iterable[str]) -> str | None:
    """The fingerprint on the last marked line (a restarted container prints a new one), if any."""
    found: str | None = None
    for line in lines:
        match = _LINE.search(line)
        if match:
            found = match.group(1).replace(":", "").lower()
    return found


def _host_port(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    if parts.scheme != "https" or not parts.hostname:
        raise UsageError(f"not an https URL: {url}")
    return parts.hostname, parts.port or 443


def _is_plain_http(exc: ssl.SSLError) -> bool:
    # An http server reading a ClientHello answers "HTTP/1.1 400 ...": read as a TLS record, that is
    # an unknown version (OpenSSL: WRONG_VERSION_NUMBER; 3.x may say "record layer failure").
    text = f"{exc.reason or ''} {exc}".upper()
    return any(s in text for s in ("WRONG_VERSION_NUMBER", "WRONG VERSION NUMBER", "RECORD_LAYER_FAILURE",
                                    "RECORD LAYER FAILURE", "HTTP_REQUEST", "UNKNOWN_PROTOCOL"))


def presented_certificate(url: str, *, timeout_s: float = 10.0) -> bytes:
    """One TLS handshake with the server at ``url``; the certificate it presented (DER). Sends no request.

    The certificate is not verified here: the caller compares its hash with the pin. ``OSError`` (refused,
    timeout) propagates; a plain-http answer is ``PlainHttpAnswer``.
    """
    host, port = _host_port(url)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    with socket.create_connection((host, port), timeout=timeout_s) as raw:
        try:
            with ctx.wrap_socket(raw, server_hostname=host) as tls:
                der = tls.getpeercert(binary_form=True)
        except ssl.SSLError as exc:
            if _is_plain_http(exc):
                raise PlainHttpAnswer(
                    f"{url} answered in plain http where TLS was expected; refused, the key was not sent",
                    hint="something between here and the host is not the deployment's proxy",
                ) from None
            raise
    if not der:
        raise CertificateMismatch(MISMATCH_MESSAGE + f" ({url} presented no certificate)")
    return der


def pin_certificate(url: str, fingerprint: str, *, timeout_s: float = 10.0) -> str:
    """The certificate (PEM) the endpoint presents, if its SHA-256 is ``fingerprint``; else CertificateMismatch."""
    der = presented_certificate(url, timeout_s=timeout_s)
    got = fingerprint_of(der)
    if got != fingerprint:
        raise CertificateMismatch(
            f"{MISMATCH_MESSAGE}: {url} presented sha256 {colon_form(got)}, the host reported "
            f"{colon_form(fingerprint)}; nothing was sent with the key",
            hint="someone may be intercepting the connection; the deployment was not used",
        )
    return ssl.DER_cert_to_PEM_cert(der)


def pinned_context(certificate_pem: str) -> ssl.SSLContext:
    """A client context that trusts exactly one certificate (self-signed, CA:FALSE) and nothing else.

    The host name is not checked: the pin, not a name, identifies the server (a ``--url`` target may be
    reached under a name its self-signed certificate does not carry).
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(cadata=certificate_pem)
    return ctx


def _trusts_nothing() -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


@dataclass(frozen=True)
class EndpointTrust:
    """How a client trusts one endpoint: a pin (and the certificate once seen), a CA file, or plain http."""

    fingerprint: str | None = None
    certificate_pem: str | None = field(default=None, repr=False)
    ca_file: str | None = None

    def context(self, url: str, *, timeout_s: float = 10.0) -> ssl.SSLContext | bool:
        """What httpx's ``verify`` gets, after checking the pin with one handshake (CertificateMismatch)."""
        if not url.startswith("https://"):
            return True  # plain http: only --url targets and `env --insecure-http` users get here
        if self.fingerprint is not None:
            try:
                pem = pin_certificate(url, self.fingerprint, timeout_s=timeout_s)
            except OSError:
                # Nothing answers (refused, timed out): the request that follows reports it. It may only
                # ever complete against the pinned certificate; with none seen yet, against nothing.
                return pinned_context(self.certificate_pem) if self.certificate_pem else _trusts_nothing()
            if self.certificate_pem is not None and self.certificate_pem.strip() != pem.strip():
                raise CertificateMismatch(MISMATCH_MESSAGE)  # same hash, different bytes: cannot happen
            return pinned_context(pem)
        if self.ca_file is not None:
            ctx = ssl.create_default_context(cafile=self.ca_file)
            return ctx
        return True


def deployment_trust(d: Deployment) -> EndpointTrust:
    """A deployment's pin as recorded by ``up`` (an older plain-http row has none)."""
    return EndpointTrust(fingerprint=d.tls_fingerprint, certificate_pem=d.tls_certificate)


def pinned_client(url: str, trust: EndpointTrust, *, timeout: httpx.Timeout | float = 30.0) -> httpx.Client:
    """The httpx client for ``url``: pin checked first, redirects never followed, proxy variables ignored."""
    import httpx

    verify = trust.context(url)
    return httpx.Client(verify=verify, timeout=timeout, follow_redirects=False, trust_env=False)


def https_url(url: str) -> str:
    """``http://ip:port`` (Vast's mapped port) -> ``https://ip:port``: the proxy there speaks TLS."""
    return "https://" + url.removeprefix("http://").removeprefix("https://")


__all__ = [
    "EXIT_TLS_REFUSED",
    "FINGERPRINT_MARKER",
    "MISMATCH_MESSAGE",
    "CertificateMismatch",
    "EndpointNotTrusted",
    "EndpointTrust",
    "PlainHttpAnswer",
    "colon_form",
    "fingerprint_in_log",
    "fingerprint_of",
    "normalize_fingerprint",
    "pin_certificate",
    "pinned_client",
    "pinned_context",
    "presented_certificate",
]
