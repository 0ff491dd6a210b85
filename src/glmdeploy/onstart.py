"""The shell script a rented instance runs at start (Vast's ``onstart`` field).

Every argv element is ``shlex.quote``-d; the only unquoted expansions are the
``EnvRef`` markers, rendered as ``"${NAME}"`` so that secrets live in the instance
environment and never in the script Vast stores and echoes back.

Two parts wrap the engine command:

- an authenticating, TLS-terminating reverse proxy (nginx, installed from the image's package manager
  if missing) in front of every engine. The engine binds the container's loopback only; nginx answers
  401 ``{"error":"Unauthorized"}`` without the key, streams SSE unbuffered, and speaks only TLS with a
  key pair openssl generates on the host at start (an EC P-256 key; the certificate carries the
  instance's public IP as a SAN). The certificate's SHA-256 is printed on one marked line
  (``glmdeploy.tls.FINGERPRINT_MARKER``) that glmdeploy reads through the Vast API and pins (docs/tls.md);
- an optional TTL watchdog that destroys the instance from inside once its time is up, using the instance's
  own ``CONTAINER_ID``/``CONTAINER_API_KEY`` (vast-api.md §9), never the user's account key.

Vast caps onstart + args at 4096 characters (vast-api.md §11.9); ``render`` checks it.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from glmdeploy.engines import API_KEY_ENV, EnvRef, get_engine

if TYPE_CHECKING:
    from glmdeploy.profiles.model import Profile

ONSTART_LIMIT = 4096
# The engine's port behind the proxy, on the container's loopback.
PROXY_UPSTREAM_PORT = 18000
VAST_URL_ENV = "GLMDEPLOY_VAST_URL"
PROXY_CONF = "/etc/nginx/conf.d/glmdeploy.conf"
TLS_DIR = "/etc/glmdeploy-tls"
TLS_CERT = f"{TLS_DIR}/cert.pem"
TLS_KEY = f"{TLS_DIR}/key.pem"
# The marker glmdeploy.tls.FINGERPRINT_MARKER matches (kept literal here: onstart imports no client code).
FINGERPRINT_MARKER = "glmdeploy-tls: certificate sha256 fingerprint"


def quote_arg(arg: str) -> str:
    if isinstance(arg, EnvRef):
        return f'"${{{arg.var}}}"'
    return shlex.quote(arg)


def shell_join(argv: Sequence[str]) -> str:
    return " ".join(quote_arg(a) for a in argv)


def display_command(argv: Sequence[str]) -> str:
    """The command as users read it: like ``shell_join`` but ``$NAME`` for env references."""
    return " ".join(str(a) if isinstance(a, EnvRef) else shlex.quote(a) for a in argv)


def launch_argv(profile: Profile, *, host: str = "0.0.0.0", port: int | None = None) -> list[str]:
    """The engine command exactly as the profile's seed would run it."""
    return get_engine(profile.engine.kind).argv(profile, host=host, port=port)


@dataclass(frozen=True)
class OnstartOptions:
    """Deployment-specific parts of the script."""

    deployment: str = "preview"
    ttl_seconds: int | None = None
    # Kept for callers that forced the proxy: every engine gets it now (it terminates TLS).
    auth_proxy: bool = False
    # `up --insecure-http`-style plain proxy; the default, and what glmdeploy deploys, is TLS.
    tls: bool = True


def needs_proxy(profile: Profile, options: OnstartOptions | None = None) -> bool:
    """Every engine is behind the proxy: it terminates TLS (and checks the key for LightLLM)."""
    return True


# The fallback SAN: the address Vast reports for this instance, asked with the instance's own key (vast-api.md §9).
ASK_VAST_IP = (
    'import json,os,urllib.request as u;r=u.Request(os.environ["' + VAST_URL_ENV + '"].rstrip("/")'
    '+"/api/v0/instances/"+os.environ["CONTAINER_ID"]+"/",headers={"Authorization":"Bearer "'
    '+os.environ["CONTAINER_API_KEY"]});print(json.load(u.urlopen(r,timeout=20))["instances"]["public_ipaddr"])'
)


def tls_snippet(cert: str = TLS_CERT, key: str = TLS_KEY) -> str:
    """Generate the proxy's EC key pair and self-signed certificate on the host, print its fingerprint.

    The SAN is the address the host knows (``PUBLIC_IPADDR``, vast-api.md §9), else the one Vast reports
    for this instance (asked with the instance's own ``CONTAINER_API_KEY``). The private key stays in
    ``TLS_DIR`` (0700/0600); the log line carries only the public fingerprint.
    """
    return "\n".join([
        f"mkdir -p -m 700 {shlex.quote(TLS_DIR)}",
        'glmdeploy_ip="${PUBLIC_IPADDR:-}"',
        f'[ -n "$glmdeploy_ip" ] || glmdeploy_ip="$(python3 -c {shlex.quote(ASK_VAST_IP)} 2>/dev/null)"',
        "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 397"
        f" -subj /CN=glmdeploy -keyout {shlex.quote(key)} -out {shlex.quote(cert)}"
        ' -addext "subjectAltName=IP:${glmdeploy_ip:-127.0.0.1}" -addext basicConstraints=critical,CA:FALSE'
        ' -addext extendedKeyUsage=serverAuth >/dev/null 2>&1'
        ' || { echo "glmdeploy: openssl could not generate the TLS certificate" >&2; exit 1; }',
        f"chmod 600 {shlex.quote(key)}",
        f'echo "{FINGERPRINT_MARKER} $(openssl x509 -in {shlex.quote(cert)} -noout -fingerprint -sha256'
        ' | cut -d= -f2)"',
    ])


def proxy_config_snippet(
    listen_port: int, upstream_port: int, conf_path: str = PROXY_CONF, *, tls: bool = False
) -> str:
    """Shell lines writing the nginx server block that checks the Bearer key and streams unbuffered.

    The key is read from the environment when the script runs, so it is written only into the
    config file on the host (mode 0600), never into this script. /health stays open, as SGLang keeps it.
    """
    tls_lines = (
        f"\n  ssl_certificate {TLS_CERT};\n  ssl_certificate_key {TLS_KEY};\n  ssl_protocols TLSv1.2 TLSv1.3;"
        if tls else ""
    )
    conf = f"""map $http_authorization $glmdeploy_authorized {{
  default 0;
  "~^(?i:bearer)[[:space:]]+${{{API_KEY_ENV}}}\\$" 1;
}}
server {{
  listen {listen_port}{" ssl" if tls else ""};{tls_lines}
  default_type application/json;
  location = /health {{ proxy_pass http://127.0.0.1:{upstream_port}; }}
  location / {{
    if ($glmdeploy_authorized = 0) {{ return 401 '{{"error":"Unauthorized"}}'; }}
    proxy_pass http://127.0.0.1:{upstream_port};
    proxy_http_version 1.1;
    proxy_set_header Connection "";
    proxy_buffering off;
    proxy_cache off;
    proxy_read_timeout 3600s;
    chunked_transfer_encoding on;
  }}
}}"""
    # Inside the unquoted heredoc only ${GLM_API_KEY} expands; nginx's own $variables are escaped.
    conf = conf.replace("$http_authorization", r"\$http_authorization").replace(
        "$glmdeploy_authorized", r"\$glmdeploy_authorized"
    )
    path = shlex.quote(conf_path)
    return "\n".join([f"cat > {path} <<GLMDEPLOY_NGINX", conf, "GLMDEPLOY_NGINX", f"chmod 600 {path}"])


def proxy_snippet(listen_port: int, upstream_port: int, *, tls: bool = False) -> str:
    """Install nginx (and openssl) from the image's package manager if needed, configure it, start it."""
    return "\n".join(
        [
            "if ! command -v nginx >/dev/null 2>&1 || ! command -v openssl >/dev/null 2>&1; then",
            "  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light openssl"
            " || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx openssl) >/dev/null 2>&1"
            ' || { echo "glmdeploy: could not install nginx for the auth proxy" >&2; exit 1; }',
            "fi",
            "rm -f /etc/nginx/sites-enabled/default",
            *([tls_snippet()] if tls else []),
            proxy_config_snippet(listen_port, upstream_port, tls=tls),
            'nginx || { echo "glmdeploy: nginx failed to start" >&2; exit 1; }',
        ]
    )


def watchdog_snippet(ttl_seconds: int) -> str:
    """A background loop that destroys this instance after ``ttl_seconds``, retrying until it is gone.

    Uses only what Vast injects into the container (CONTAINER_ID, CONTAINER_API_KEY) plus the API URL
    glmdeploy passes in GLMDEPLOY_VAST_URL. A 404 means it is already gone, which counts as done.
    """
    ttl = int(ttl_seconds)
    return f"""glmdeploy_watchdog() {{
  sleep {ttl}
  while :; do
    python3 - <<'GLMDEPLOY_PY' && break
import os, sys, urllib.error, urllib.request
url = os.environ["{VAST_URL_ENV}"].rstrip("/") + "/api/v0/instances/" + os.environ["CONTAINER_ID"] + "/"
req = urllib.request.Request(url, data=b"{{}}", method="DELETE", headers={{
    "Authorization": "Bearer " + os.environ["CONTAINER_API_KEY"], "Content-Type": "application/json"}})
try:
    urllib.request.urlopen(req, timeout=30)
except urllib.error.HTTPError as exc:
    sys.exit(0 if exc.code == 404 else 1)
except OSError:
    sys.exit(1)
GLMDEPLOY_PY
    sleep 20
  done
}}
glmdeploy_watchdog >/dev/null 2>&1 &"""


def render(profile: Profile, options: OnstartOptions | None = None) -> str:
    """The complete onstart script for ``profile``; raises ``ValueError`` when over Vast's limit."""
    options = options or OnstartOptions()
    engine = get_engine(profile.engine.kind)
    lines = [
        "#!/bin/bash",
        f"# glmdeploy onstart: profile {profile.name}, deployment {options.deployment}",
        "set -u",
    ]
    if options.ttl_seconds:
        lines.append(watchdog_snippet(options.ttl_seconds))
    for target, source in engine.auth_env().items():
        lines.append(f'export {target}="${{{source}}}"')
    host, port = "0.0.0.0", profile.engine.port
    if needs_proxy(profile, options):
        lines.append(proxy_snippet(profile.engine.port, PROXY_UPSTREAM_PORT, tls=options.tls))
        host, port = "127.0.0.1", PROXY_UPSTREAM_PORT
    model_dir = engine.model_dir(profile)
    if model_dir is not None:
        download = ["hf", "download", profile.model.repo, "--local-dir", model_dir]
        if profile.model.revision:
            download += ["--revision", profile.model.revision]
        lines.append(shell_join(download) + " || exit 1")
    lines.append("exec " + shell_join(engine.argv(profile, host=host, port=port)))
    script = "\n".join(lines) + "\n"
    if len(script) > ONSTART_LIMIT:
        raise ValueError(f"onstart script is {len(script)} characters; Vast accepts at most {ONSTART_LIMIT}")
    return script


__all__ = [
    "API_KEY_ENV",
    "FINGERPRINT_MARKER",
    "PROXY_UPSTREAM_PORT",
    "VAST_URL_ENV",
    "OnstartOptions",
    "display_command",
    "launch_argv",
    "needs_proxy",
    "render",
    "shell_join",
    "watchdog_snippet",
]
