"""The supervised gateway process: SMG behind a key guard that strips the client's key.

Run as ``python -m glmdeploy.gateway_guard`` by ``glmdeploy.gateway.SmgGateway.start``, in its own
session (so one ``killpg`` stops both parts). It

1. starts the real ``smg launch`` on a private 127.0.0.1 port, *without* ``--api-key``;
2. serves the public address (``--host``/``--port``), checks ``Authorization: Bearer <gateway key>``
   on every request but ``/health``, drops that header and forwards the request to SMG, streaming the
   response back chunk by chunk (SSE passes through as it is produced);
3. exits when SMG exits (a crashed gateway is a closed port, never a half-working one), and stops SMG
   when it is told to stop (SIGTERM/SIGINT).

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


def _app(upstream: str, key: str, info: dict[str, Any]) -> Any:
    import httpx
    from starlette.applications import Starlette
    from starlette.background import BackgroundTask
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response, StreamingResponse
    from starlette.routing import Route

    client = httpx.AsyncClient(base_url=upstream, timeout=httpx.Timeout(600.0, connect=5.0), trust_env=False)
    expected = f"Bearer {key}".encode()

    async def health(request: Request) -> Response:
        try:
            r = await client.get("/health", timeout=5.0)
            healthy = r.status_code == 200
        except httpx.HTTPError:
            healthy = False
        return JSONResponse({**info, "smg_healthy": healthy}, status_code=200 if healthy else 502)

    async def forward(request: Request) -> Response:
        given = request.headers.get("authorization", "").encode()
        if not secrets.compare_digest(given, expected):
            return JSONResponse(
                {"error": {"message": "missing or wrong gateway API key", "type": "invalid_request_error",
                           "code": "invalid_api_key"}},
                status_code=401,
            )
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
                "metrics_port": metrics_port}
        config = uvicorn.Config(_app(upstream, key, info), log_level="warning", access_log=False,
                                timeout_graceful_shutdown=3)
        server = uvicorn.Server(config)

        async def serve() -> None:
            task = asyncio.create_task(server.serve(sockets=[sock]))
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


if __name__ == "__main__":
    sys.exit(main())
