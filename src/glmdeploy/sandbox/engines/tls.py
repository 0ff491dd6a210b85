"""The simulated host's TLS: what the onstart script's openssl and nginx would do, in process.

Each simulated host generates its own EC P-256 key pair and a self-signed certificate like the
script's ``openssl req -x509 ... -addext subjectAltName=IP:... -addext basicConstraints=critical,CA:FALSE``,
prints the same marked fingerprint line, and serves its port over TLS. The ``tls_intercept`` fault
serves a *different* certificate (a man in the middle with a key of its own) while the log still
reports the host's: glmdeploy must refuse it, and ``handshakes`` / the request log show that the
connection stopped at the handshake, before any request (and so any key) arrived.

Certificates come from the maintained ``cryptography`` package (already in uv.lock), imported lazily.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import os
import ssl
import tempfile
from dataclasses import dataclass

from glmdeploy.onstart import FINGERPRINT_MARKER


@dataclass(frozen=True)
class HostCertificate:
    cert_pem: bytes
    key_pem: bytes

    @property
    def fingerprint(self) -> str:
        der = ssl.PEM_cert_to_DER_cert(self.cert_pem.decode())
        return hashlib.sha256(der).hexdigest()

    def log_line(self) -> str:
        """``openssl x509 -noout -fingerprint -sha256 | cut -d= -f2`` after the marker."""
        fp = self.fingerprint.upper()
        return f"{FINGERPRINT_MARKER} " + ":".join(fp[i : i + 2] for i in range(0, len(fp), 2))

    def server_context(self) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        # load_cert_chain reads files only; the key lives for the instant it takes, 0600 in a private dir.
        with tempfile.TemporaryDirectory(prefix="glmdeploy-sandbox-tls-") as tmp:
            cert, key = os.path.join(tmp, "cert.pem"), os.path.join(tmp, "key.pem")
            with open(cert, "wb") as f:
                f.write(self.cert_pem)
            fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(self.key_pem)
            ctx.load_cert_chain(cert, key)
        return ctx


def generate(san_ip: str | None, *, common_name: str = "glmdeploy") -> HostCertificate:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=397))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    )
    if san_ip:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(san_ip))]), critical=False
        )
    cert = builder.sign(key, hashes.SHA256())
    return HostCertificate(
        cert_pem=cert.public_bytes(serialization.Encoding.PEM),
        key_pem=key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ),
    )
