"""The per-deployment CA bundle ``glmdeploy env`` points SSL_CERT_FILE, REQUESTS_CA_BUNDLE and CURL_CA_BUNDLE at.

The system's CAs (certifi's, when httpx brought it in; else OpenSSL's default file) followed by the
deployment's own self-signed certificate, the one whose fingerprint its host logged and a TLS connection
presented. Those variables replace the default trust store for the whole shell, so the system CAs stay in:
other https sites keep working. The endpoint's certificate is CA:FALSE, so it vouches for itself only.

Public data (certificates only, no key): 0644, in the state directory.
"""

from __future__ import annotations

import os
import ssl
from pathlib import Path
from typing import TYPE_CHECKING

from glmdeploy.paths import ensure_home

if TYPE_CHECKING:
    from glmdeploy.state import Deployment

BUNDLE_DIR = "ca-bundles"


def system_ca_file() -> str | None:
    try:
        import certifi

        return str(certifi.where())
    except ImportError:
        paths = ssl.get_default_verify_paths()
        for candidate in (paths.cafile, paths.openssl_cafile):
            if candidate and os.path.isfile(candidate):
                return candidate
    return None


def bundle_path(d: Deployment) -> Path:
    return ensure_home() / BUNDLE_DIR / f"{d.id}.pem"


def write_bundle(d: Deployment) -> Path:
    """Write (atomically, 0644) and return the bundle for ``d``, which must have a pinned certificate."""
    assert d.tls_certificate is not None
    system = system_ca_file()
    parts = [Path(system).read_text()] if system else []
    parts.append(f"# glmdeploy deployment {d.name} ({d.endpoint}), sha256 {d.tls_fingerprint}\n")
    parts.append(d.tls_certificate.strip() + "\n")
    path = bundle_path(d)
    path.parent.mkdir(mode=0o700, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    with os.fdopen(fd, "w") as f:
        f.write("\n".join(p.rstrip("\n") for p in parts) + "\n")
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
    return path
