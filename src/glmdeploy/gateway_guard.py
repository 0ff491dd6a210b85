"""The supervised gateway process: SMG behind a key guard that strips the client's key.

Run as ``python -m glmdeploy.gateway_guard`` by ``glmdeploy.gateway.SmgGateway.start``, in its own
session (so one ``killpg`` stops both parts). It

1. starts the real ``smg launch`` on a private 127.0.0.1 port, *without* ``--api-key``;
2. serves the public address (``--host``/``--port``), checks ``Authorization: Bearer <gateway key>``
   on every request but ``/health``, drops that header and forwards the request to SMG, streaming the
   response back chunk by chunk (SSE passes through as it is produced);
3. serves a second, private listener on 127.0.0.1: one pinned-TLS forwarder per replica. SMG is
   given ``http://127.0.0.1:<forwarder port>/replica/<index>`` as the replica's URL; the guard sends
   each request on to that replica's ``https://`` endpoint over a TLS connection that trusts exactly
   the certificate its host reported through the Vast API (``glmdeploy.tls.pinned_context``), and
   streams the answer back as it arrives;
4. exits when SMG exits (a crashed gateway is a closed port, never a half-working one), and stops SMG
   when it is told to stop (SIGTERM/SIGINT).

Why the forwarder: every replica is a self-signed ``https://`` endpoint (issue 14), and SMG cannot
pin one. Its only worker-TLS setting is ``--ca-cert-paths`` (bindings/python/src/smg/router_args.py
in lightseekorg/smg at 0beaedc5), read once at launch: a replica rented later by ``scale`` could not
be added without restarting SMG, and a CA list trusts every listed certificate for every worker
rather than one certificate for one replica. So SMG speaks plain http on loopback only, and the
hop that leaves this machine is the guard's, pinned per replica. SMG keeps routing, health checks,
retries and the per-replica key (its ``Authorization`` header passes through the forwarder as is).

Why the guard: SMG 1.13.0 forwards the client's ``Authorization`` header to the worker, and it
replaces the worker's own key (observed on 127.0.0.1: a worker registered with ``api_key`` received
``Bearer <gateway key>`` on ``/v1/chat/completions``; see ``should_forward_request_header`` in
lightseekorg/smg ``model_gateway/src/routers/common/header_utils.rs`` and the request builder in
``model_gateway/src/routers/http/router.rs`` at 73da68ca). With ``--api-key`` on SMG itself every
replica would receive the gateway key as its credential, which issue 12 forbids. Routing, health
checks, retries and worker registration stay SMG's; the guard only authenticates and strips.

The gateway key comes in the environment (``GLMDEPLOY_GATEWAY_KEY``), never in argv (``ps`` shows
argv to every user).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from typing import Any

KEY_ENV = "GLMDEPLOY_GATEWAY_KEY"
SMG_START_TIMEOUT_S = 30.0
# Hop-by-hop headers and the ones httpx sets itself.
_DROP_REQUEST = frozenset({"host", "authorization", "content-length", "connection", "transfer-encoding"})
_DROP_RESPONSE = frozenset({"content-length", "connection", "transfer-encoding", "content-encoding"})
# The forwarder keeps Authorization: it is the replica's own key, set by SMG for that replica.
_DROP_FORWARDED = _DROP_REQUEST - {"authorization"}
# glmdeploy's control call on the public port (gateway key required): pin a replica, get its loopback URL.
FORWARDERS_PATH = "/_glmdeploy/replicas"
REPLICA_PREFIX = "/replica/"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def smg_argv(smg: str, *, port: int, policy: str, prometheus_port: int) -> list[str]:
    """``smg launch`` flags (bindings/python/src/smg/router_args.py in lightseekorg/smg, v1.13.0 wheel).

    No workers at start: each replica is added with ``POST /workers`` after its own checks pass.
    Health checks every 2 s, 2 failures mark a worker unhealthy: a lost replica stops taking
    traffic within seconds, and SMG's retries (default 5) move its requests to the survivors.
    """
    return [
        smg, "launch",
        "--host", "127.0.0.1",
        "--port", str(port),
        "--policy", policy,
        # GLM's tokenizer would be fetched from the Hub otherwise; the HTTP router does not need it.
        "--disable-tokenizer-autoload",
        "--health-check-interval-secs", "2",
        "--health-failure-threshold", "2",
        "--health-check-timeout-secs", "5",
        "--prometheus-host", "127.0.0.1",
        "--prometheus-port", str(prometheus_port),
        "--log-level", "warn",
    ]


class Forwarders:
    """The replicas the private listener forwards to, by index: each an httpx client pinned to its certificate."""

    def __init__(self, port: int) -> None:
        self.port = port
        self._clients: dict[str, Any] = {}

    def worker_url(self, index: str) -> str:
        return f"http://127.0.0.1:{self.port}{REPLICA_PREFIX}{index}"

    async def pin(self, index: str, url: str, certificate_pem: str) -> str:
        """Forward ``/replica/<index>`` to ``url`` (https), trusting ``certificate_pem`` and nothing else."""
        import httpx

        from glmdeploy.tls import pinned_context

        if not url.startswith("https://"):
            raise ValueError("a replica is reached over https only")
        client = httpx.AsyncClient(base_url=url.rstrip("/"), verify=pinned_context(certificate_pem),
                                   timeout=httpx.Timeout(600.0, connect=5.0), follow_redirects=False,
                                   trust_env=False)
        old = self._clients.pop(index, None)
        self._clients[index] = client
        if old is not None:
            await old.aclose()
        return self.worker_url(index)

    def client(self, index: str) -> Any:
        return self._clients.get(index)


def _forwarder_app(forwarders: Forwarders) -> Any:
    """The private listener: what SMG sends to ``/replica/<index>/...`` goes on to that replica, pinned."""
    import ssl

    import httpx
    from starlette.applications import Starlette
    from starlette.background import BackgroundTask
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response, StreamingResponse
    from starlette.routing import Route

    async def forward(request: Request) -> Response:
        index = request.path_params["index"]
        client = forwarders.client(index)
        if client is None:
            return JSONResponse({"error": {"message": f"no replica {index}", "type": "gateway_error"}},
                                status_code=404)
        headers = [(k, v) for k, v in request.headers.items() if k.lower() not in _DROP_FORWARDED]
        body = await request.body()
        upstream_request = client.build_request(
            request.method, "/" + request.path_params["path"], params=request.url.query or None,
            headers=headers, content=body,
        )
        try:
            r = await client.send(upstream_request, stream=True)
        except httpx.ConnectError as exc:
            if isinstance(exc.__cause__, ssl.SSLError) or "CERTIFICATE" in str(exc).upper():
                # Not the certificate its host reported: nothing was sent (the handshake failed first).
                print(f"replica {index}: the endpoint's certificate does not match the one its host reported; "
                      "refused", file=sys.stderr, flush=True)
            return JSONResponse({"error": {"message": f"replica {index} unavailable: {type(exc).__name__}",
                                           "type": "gateway_error"}}, status_code=502)
        except httpx.HTTPError as exc:
            return JSONResponse({"error": {"message": f"replica {index} unavailable: {type(exc).__name__}",
                                           "type": "gateway_error"}}, status_code=502)
        out = [(k, v) for k, v in r.headers.items() if k.lower() not in _DROP_RESPONSE]
        return StreamingResponse(r.aiter_raw(), status_code=r.status_code, headers=dict(out),
                                 background=BackgroundTask(r.aclose))

    methods = ["GET", "POST", "PUT", "PATCH", "DELETE"]
    return Starlette(routes=[Route(REPLICA_PREFIX + "{index}/{path:path}", forward, methods=methods)])


def _dispatch(public: Any, private: Any, private_port: int) -> Any:
    """One ASGI app on both listeners: the private port reaches the forwarders, the public one the guard."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        server = scope.get("server")
        if scope["type"] in ("http", "websocket") and server is not None and server[1] == private_port:
            await private(scope, receive, send)
        else:
            await public(scope, receive, send)

    return app


def _app(upstream: str, key: str, info: dict[str, Any], forwarders: Forwarders | None = None) -> Any:
    import httpx
    from starlette.applications import Starlette
    from starlette.background import BackgroundTask
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response, StreamingResponse
    from starlette.routing import Route

    client = httpx.AsyncClient(base_url=upstream, timeout=httpx.Timeout(600.0, connect=5.0), trust_env=False)
    expected = f"Bearer {key}".encode()

    def authorized(request: Request) -> bool:
        return secrets.compare_digest(request.headers.get("authorization", "").encode(), expected)

    def refused() -> Response:
        return JSONResponse(
            {"error": {"message": "missing or wrong gateway API key", "type": "invalid_request_error",
                       "code": "invalid_api_key"}},
            status_code=401,
        )

    async def pin_replica(request: Request) -> Response:
        if not authorized(request):
            return refused()
        if forwarders is None:
            return JSONResponse({"error": {"message": "no forwarder"}}, status_code=404)
        try:
            data = await request.json()
            worker = await forwarders.pin(str(int(data["index"])), str(data["url"]), str(data["certificate_pem"]))
        except (ValueError, KeyError, TypeError) as exc:
            return JSONResponse({"error": {"message": f"bad replica: {type(exc).__name__}"}}, status_code=400)
        return JSONResponse({"worker_url": worker})

    async def health(request: Request) -> Response:
        try:
            r = await client.get("/health", timeout=5.0)
            healthy = r.status_code == 200
        except httpx.HTTPError:
            healthy = False
        return JSONResponse({**info, "smg_healthy": healthy}, status_code=200 if healthy else 502)

    async def forward(request: Request) -> Response:
        if not authorized(request):
            return refused()
        headers = [(k, v) for k, v in request.headers.items() if k.lower() not in _DROP_REQUEST]
        body = await request.body()
        upstream_request = client.build_request(
            request.method, request.url.path, params=request.url.query or None, headers=headers, content=body
        )
        try:
            r = await client.send(upstream_request, stream=True)
        except httpx.HTTPError as exc:
            return JSONResponse({"error": {"message": f"gateway unavailable: {type(exc).__name__}",
                                           "type": "gateway_error"}}, status_code=502)
        out = [(k, v) for k, v in r.headers.items() if k.lower() not in _DROP_RESPONSE]
        return StreamingResponse(r.aiter_raw(), status_code=r.status_code, headers=dict(out),
                                 background=BackgroundTask(r.aclose))

    methods = ["GET", "POST", "PUT", "PATCH", "DELETE"]
    return Starlette(routes=[Route("/health", health, methods=["GET"]),
                             Route(FORWARDERS_PATH, pin_replica, methods=["POST"]),
                             Route("/{path:path}", forward, methods=methods)])


def main(argv: list[str] | None = None) -> int:
    import httpx
    import uvicorn

    parser = argparse.ArgumentParser(prog="python -m glmdeploy.gateway_guard")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--policy", default="round_robin")
    parser.add_argument("--token", required=True, help="identifies this process on /health (not a secret)")
    args = parser.parse_args(argv)
    key = os.environ.pop(KEY_ENV, "")
    if not key:
        print(f"error: {KEY_ENV} is not set", file=sys.stderr)
        return 2
    smg = shutil.which("smg") or os.path.join(os.path.dirname(sys.executable), "smg")
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((args.host, args.port))
    except OSError as exc:
        print(f"error: cannot listen on {args.host}:{args.port}: {exc.strerror or exc}", file=sys.stderr)
        return 3
    sock.listen(128)
    # The private listener SMG reaches the replicas through (loopback only, whatever --host says).
    private = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    private.bind(("127.0.0.1", 0))
    private.listen(128)
    forwarder_port = int(private.getsockname()[1])
    smg_port = free_port()
    metrics_port = free_port()
    proc = subprocess.Popen(smg_argv(smg, port=smg_port, policy=args.policy, prometheus_port=metrics_port),
                            stdin=subprocess.DEVNULL)
    try:
        upstream = f"http://127.0.0.1:{smg_port}"
        deadline = time.monotonic() + SMG_START_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                print(f"error: smg exited with {proc.returncode} at start", file=sys.stderr)
                return 4
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(upstream + "/health", timeout=1.0, trust_env=False).status_code == 200:
                    break
            if time.monotonic() >= deadline:
                print("error: smg did not answer /health in time", file=sys.stderr)
                return 4
            time.sleep(0.1)
        info = {"pid": os.getpid(), "token": args.token, "smg_pid": proc.pid, "policy": args.policy,
                "metrics_port": metrics_port, "forwarder_port": forwarder_port}
        forwarders = Forwarders(forwarder_port)
        app = _dispatch(_app(upstream, key, info, forwarders), _forwarder_app(forwarders), forwarder_port)
        config = uvicorn.Config(app, log_level="warning", access_log=False, timeout_graceful_shutdown=3)
        server = uvicorn.Server(config)

        async def serve() -> None:
            task = asyncio.create_task(server.serve(sockets=[sock, private]))
            while not task.done():
                if proc.poll() is not None:
                    print(f"smg exited with {proc.returncode}: the gateway stops", file=sys.stderr, flush=True)
                    server.should_exit = True
                    break
                await asyncio.sleep(0.2)
            await task

        asyncio.run(serve())
        return 0 if proc.poll() is None else 5
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        sock.close()
        private.close()


if __name__ == "__main__":
    sys.exit(main())
