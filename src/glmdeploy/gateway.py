"""The gateway in front of a replica group, behind a small interface (issue 12).

``Gateway`` is what ``glmdeploy.replicas`` needs from a router: add a worker with its own key,
remove it, read the workers' state, stop. ``SmgGateway`` implements it with SMG (the Shepherd Model
Gateway, ``pip install 'glmdeploy[gateway]'``), run as a supervised background process on this
machine (``glmdeploy.gateway_guard``): another router would implement the same four calls.

SMG's control API, as served by smg 1.13.0 (model_gateway/src/server.rs, crates/protocols/src/worker.rs
in lightseekorg/smg), checked on 127.0.0.1:

- ``POST /workers {"url", "api_key"}`` answers 202 ``{"worker_id", ...}``; the worker is added in
  the background and shows in ``GET /workers`` once SMG has probed it;
- ``GET /workers`` -> ``{"workers": [{"id", "url", "is_healthy", "status", "load", ...}]}``;
- ``DELETE /workers/<id>`` answers 202; the worker turns ``draining`` and then disappears.

A replica is an ``https://`` endpoint with a self-signed, pinned certificate (issue 14), which SMG
cannot pin. ``add_worker`` first hands the replica's URL and certificate to glmdeploy's guard, which
answers with a loopback ``http://127.0.0.1:<port>/replica/<index>`` URL it forwards over pinned TLS;
SMG is given that URL (a path prefix is kept by SMG 1.13.0 on every call: ``/replica/7/health``,
``/replica/7/v1/chat/completions``, checked on 127.0.0.1). See ``glmdeploy.gateway_guard``.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import httpx

from glmdeploy.errors import GlmdeployError, UsageError
from glmdeploy.gateway_guard import FORWARDERS_PATH

SMG_VERSION = "1.13.0"
INSTALL_HINT = "pip install 'glmdeploy[gateway]'"
DEFAULT_POLICY = "round_robin"
START_TIMEOUT_S = 40.0
STOP_TIMEOUT_S = 10.0
REGISTER_TIMEOUT_S = 60.0


class GatewayError(GlmdeployError):
    code = "gateway_error"
    exit_code = 4


@dataclass(frozen=True)
class WorkerState:
    worker_id: str
    url: str
    healthy: bool
    status: str | None


class Gateway(Protocol):
    """What a replica group needs from its router."""

    url: str
    pid: int | None
    policy: str

    def add_worker(self, index: int, url: str, api_key: str, certificate_pem: str | None) -> str: ...

    def remove_worker(self, worker_id: str) -> None: ...

    def workers(self) -> list[WorkerState]: ...

    def stop(self) -> bool: ...


def smg_binary() -> str:
    """The ``smg`` executable, or a one-line error naming the install command."""
    import shutil

    found = shutil.which("smg") or str(Path(sys.executable).with_name("smg"))
    if not Path(found).exists():
        raise UsageError(f"--replicas needs the SMG gateway, which is not installed: {INSTALL_HINT}")
    return found


def check_port_free(host: str, port: int) -> None:
    """Bad input before anything is rented: the gateway's port must be free."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise UsageError(
                f"the gateway port {host}:{port} is taken ({exc.strerror or exc}); nothing was rented",
                hint="pick another with --gateway-port",
            ) from None


def pick_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _client_host(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "", "::") else host


class SmgGateway:
    """SMG behind glmdeploy's key guard, as a background process in its own session."""

    def __init__(self, url: str, key: str, *, pid: int | None, policy: str = DEFAULT_POLICY) -> None:
        self.url = url
        self.pid = pid
        self.policy = policy
        self._key = key
        self._http = httpx.Client(timeout=httpx.Timeout(30.0, connect=5.0), trust_env=False)

    # -- life --

    @classmethod
    def start(cls, *, host: str, port: int, key: str | None = None, policy: str = DEFAULT_POLICY,
              log_path: Path | None = None) -> SmgGateway:
        smg_binary()
        key = key or secrets.token_hex(32)
        token = secrets.token_hex(8)
        env = {**os.environ, "GLMDEPLOY_GATEWAY_KEY": key, "PATH": f"{Path(sys.executable).parent}:"
               + os.environ.get("PATH", "")}
        # Owner-only, like every file under the state dir (SMG's log names worker URLs).
        log = (os.fdopen(os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600), "ab")
               if log_path is not None else subprocess.DEVNULL)
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", "glmdeploy.gateway_guard", "--host", host, "--port", str(port),
                 "--policy", policy, "--token", token],
                env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
            )
        finally:
            if log is not subprocess.DEVNULL:
                log.close()  # type: ignore[union-attr]
        gateway = cls(f"http://{_client_host(host)}:{port}", key, pid=proc.pid, policy=policy)
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            code = proc.poll()
            if code is not None:
                raise GatewayError(f"the gateway exited at start (code {code})"
                                   + (f"; see {log_path}" if log_path else ""))
            info = gateway.identity()
            if info is not None and info.get("token") == token:
                return gateway
            if time.monotonic() >= deadline:
                gateway.stop()
                raise GatewayError("the gateway did not answer /health in time")
            time.sleep(0.1)

    def identity(self) -> dict[str, object] | None:
        """What the guard's /health says about itself (pid, token, policy), or None if nothing answers."""
        try:
            r = self._http.get(self.url + "/health", timeout=3.0)
            data = r.json()
        except (httpx.HTTPError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def alive(self) -> bool:
        info = self.identity()
        return info is not None and info.get("pid") == self.pid and bool(info.get("smg_healthy"))

    def stop(self) -> bool:
        """Stop the gateway and SMG with it; True once the port no longer answers as this gateway."""
        pid = self.pid
        if pid is None:
            return self.identity() is None
        if not _is_our_guard(pid):
            return self.identity() is None  # already gone (a pid reused by something else is not ours)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while time.monotonic() < deadline:
            if not _is_our_guard(pid) and self.identity() is None:
                break
            _reap(pid)
            time.sleep(0.1)
        else:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
            _reap(pid)
        self._http.close()
        return True

    # -- workers --

    def _auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._key}"}

    def _call(self, method: str, path: str, **kw: object) -> httpx.Response:
        try:
            r = self._http.request(method, self.url + path, headers=self._auth(), **kw)  # type: ignore[arg-type]
        except httpx.HTTPError as exc:
            raise GatewayError(f"the gateway at {self.url} did not answer {method} {path}: "
                               f"{type(exc).__name__}") from None
        if r.status_code >= 400:
            raise GatewayError(f"the gateway refused {method} {path}: HTTP {r.status_code}")
        return r

    def workers(self) -> list[WorkerState]:
        data = self._call("GET", "/workers").json()
        return [
            WorkerState(worker_id=str(w.get("id")), url=str(w.get("url")), healthy=bool(w.get("is_healthy")),
                        status=w.get("status"))
            for w in data.get("workers", [])
        ]

    def add_worker(self, index: int, url: str, api_key: str, certificate_pem: str | None) -> str:
        """Register replica ``index`` (its own key goes with it) and wait until SMG routes to it.

        ``url`` is the replica's ``https://`` server root and ``certificate_pem`` the certificate it was
        pinned to: the guard reaches it over TLS that trusts that certificate only, SMG reaches the guard
        on loopback. A replica without a pinned certificate is refused: its key would travel in clear.
        """
        if not url.startswith("https://") or not certificate_pem:
            raise GatewayError(f"replica {index} has no pinned https endpoint; it was not registered "
                               "(its key would cross the network unpinned)")
        pinned = self._call("POST", FORWARDERS_PATH,
                            json={"index": index, "url": url, "certificate_pem": certificate_pem})
        url = str(pinned.json().get("worker_url") or "")
        if not url.startswith("http://127.0.0.1:"):
            raise GatewayError("the gateway did not give a loopback forwarder for the replica")
        r = self._call("POST", "/workers", json={"url": url, "api_key": api_key})
        worker_id = str(r.json().get("worker_id") or "")
        deadline = time.monotonic() + REGISTER_TIMEOUT_S
        while time.monotonic() < deadline:
            for w in self.workers():
                if (w.worker_id == worker_id or w.url == url) and w.healthy:
                    return w.worker_id
            time.sleep(0.2)
        raise GatewayError(f"the gateway did not take {url} into rotation within {REGISTER_TIMEOUT_S:.0f}s")

    def remove_worker(self, worker_id: str) -> None:
        """Deregister and wait until SMG no longer lists it: no request goes to it afterwards."""
        try:
            self._call("DELETE", f"/workers/{worker_id}")
        except GatewayError:
            if not any(w.worker_id == worker_id for w in self.workers()):
                return  # already gone
            raise
        deadline = time.monotonic() + REGISTER_TIMEOUT_S
        while time.monotonic() < deadline:
            if not any(w.worker_id == worker_id and w.status != "draining" for w in self.workers()):
                return
            time.sleep(0.2)
        raise GatewayError(f"the gateway still routes to worker {worker_id}")


def request_counts(gateway: SmgGateway) -> dict[str, int]:
    """Requests SMG sent to each worker URL so far (``smg_worker_requests_total{worker=...}`` on its
    Prometheus port, 127.0.0.1 only); empty when the gateway or its metrics do not answer."""
    import re

    info = gateway.identity()
    port = info.get("metrics_port") if info else None
    if not isinstance(port, int):
        return {}
    try:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5.0, trust_env=False).text
    except httpx.HTTPError:
        return {}
    counts: dict[str, int] = {}
    for m in re.finditer(r'^smg_worker_requests_total\{[^}]*worker="([^"]+)"[^}]*\} ([0-9.e+]+)$', text, re.M):
        counts[m.group(1)] = counts.get(m.group(1), 0) + int(float(m.group(2)))
    return counts


def _is_our_guard(pid: int) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"glmdeploy.gateway_guard" in cmdline


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def port_open(url: str) -> bool:
    """Whether anything accepts connections at ``url``'s host and port."""
    from urllib.parse import urlparse

    parts = urlparse(url)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 80), timeout=1.0):
            return True
    except OSError:
        return False
