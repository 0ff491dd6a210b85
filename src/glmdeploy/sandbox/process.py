"""How a sandbox lives: in the foreground, as a detached background process, or in a test thread.

A running sandbox is recorded in ``$GLMDEPLOY_HOME/sandbox.json`` (mode 0600): URL, key, PID and a
per-process token. ``stop`` only signals the recorded PID after the server at the recorded URL
has answered ``/_sandbox/health`` with that same PID and token, so a stale file can never make
us kill an unrelated process that reused the PID.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from glmdeploy import paths

if TYPE_CHECKING:
    from glmdeploy.sandbox.world import World

STATE_FILE = "sandbox.json"
LOG_FILE = "sandbox.log"
START_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 10.0
HEALTH_TIMEOUT_S = 2.0


class SandboxError(RuntimeError):
    """The sandbox could not be started or stopped; the message says why."""


class SandboxInfo(BaseModel):
    """What sandbox.json records about a running sandbox."""

    url: str
    api_key: str
    pid: int
    token: str
    port: int
    seed: int
    time_scale: float
    faults: str = ""
    started_at: float = 0.0
    log_path: str | None = None


class SandboxStatus(BaseModel):
    """``sandbox status --json`` (shared/spec/cli.md)."""

    running: bool
    url: str | None = None
    api_key: str | None = None
    pid: int | None = None


@dataclass(frozen=True)
class SandboxConfig:
    port: int = 0
    time_scale: float | None = None
    faults: str | None = None
    seed: int = 0
    api_key: str | None = None
    # Engine latency in real milliseconds (docs/sandbox.md): None = the world's defaults.
    ttft_ms: float | None = None
    tpot_ms: float | None = None


def state_path() -> Path:
    return paths.home() / STATE_FILE


def read_state() -> SandboxInfo | None:
    try:
        return SandboxInfo.model_validate_json(state_path().read_text())
    except (OSError, ValueError):
        return None


def _write_state(info: SandboxInfo) -> None:
    home = paths.ensure_home()
    target = home / STATE_FILE
    tmp = home / f".{STATE_FILE}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(info.model_dump_json(indent=2))
    os.chmod(tmp, 0o600)
    os.replace(tmp, target)


def _remove_state_if(token: str) -> None:
    current = read_state()
    if current is not None and current.token == token:
        with contextlib.suppress(FileNotFoundError):
            state_path().unlink()


def probe(info: SandboxInfo) -> bool:
    """Whether the server at ``info.url`` is the very process ``info`` describes."""
    import httpx

    try:
        # trust_env=False: a proxy configured for the outside world must not see loopback probes.
        response = httpx.get(f"{info.url}/_sandbox/health", timeout=HEALTH_TIMEOUT_S, trust_env=False)
        data = response.json()
    except (httpx.HTTPError, ValueError):
        return False
    return bool(response.status_code == 200 and data.get("pid") == info.pid and data.get("token") == info.token)


def bind(port: int = 0) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(("127.0.0.1", port))
    except OSError as exc:
        sock.close()
        raise SandboxError(f"cannot listen on 127.0.0.1:{port}: {exc.strerror or exc}") from None
    sock.listen(128)
    sock.set_inheritable(False)
    return sock


def make_world(config: SandboxConfig) -> World:
    from glmdeploy.sandbox.world import DEFAULT_TIME_SCALE, DEFAULT_TPOT_S, DEFAULT_TTFT_S, World

    return World(seed=config.seed, time_scale=config.time_scale or DEFAULT_TIME_SCALE, faults=config.faults,
                 api_key=config.api_key,
                 ttft_s=DEFAULT_TTFT_S if config.ttft_ms is None else config.ttft_ms / 1000,
                 tpot_s=DEFAULT_TPOT_S if config.tpot_ms is None else config.tpot_ms / 1000)


def _server(world: World) -> Any:
    import uvicorn

    from glmdeploy.sandbox.app import create_app

    config = uvicorn.Config(create_app(world), log_level="warning", lifespan="on", access_log=False,
                            timeout_graceful_shutdown=5)
    return uvicorn.Server(config)


def run_foreground(config: SandboxConfig, *, announce: bool = True) -> None:
    """Serve until SIGINT/SIGTERM, recorded in sandbox.json meanwhile."""
    world = make_world(config)
    sock = bind(config.port)
    port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    server = _server(world)
    info = SandboxInfo(url=url, api_key=world.api_key, pid=os.getpid(), token=world.token, port=port,
                       seed=world.seed, time_scale=world.time_scale, faults=config.faults or "",
                       started_at=time.time(), log_path=os.environ.get("GLMDEPLOY_SANDBOX_LOG"))

    async def main() -> None:
        task = asyncio.create_task(server.serve(sockets=[sock]))
        while not server.started and not task.done():
            await asyncio.sleep(0.02)
        if server.started:
            _write_state(info)
            if announce:
                print(f"sandbox listening on {url} (pid {info.pid}); Ctrl-C stops it", file=sys.stderr, flush=True)
        await task

    try:
        asyncio.run(main())
    finally:
        sock.close()
        _remove_state_if(info.token)


def status() -> SandboxStatus:
    info = read_state()
    if info is None or not probe(info):
        return SandboxStatus(running=False)
    return SandboxStatus(running=True, url=info.url, api_key=info.api_key, pid=info.pid)


def running() -> SandboxInfo | None:
    info = read_state()
    return info if info is not None and probe(info) else None


def start_background(config: SandboxConfig) -> tuple[SandboxInfo, bool]:
    """Start a detached sandbox unless one runs; returns (info, started_now)."""
    existing = running()
    if existing is not None:
        return existing, False
    home = paths.ensure_home()
    with contextlib.suppress(FileNotFoundError):
        state_path().unlink()  # stale: its server does not answer
    log_path = home / LOG_FILE
    argv = [sys.executable, "-m", "glmdeploy.sandbox.process", "--port", str(config.port), "--seed", str(config.seed)]
    if config.time_scale is not None:
        argv += ["--time-scale", repr(config.time_scale)]
    if config.faults:
        argv += ["--faults", config.faults]
    if config.ttft_ms is not None:
        argv += ["--ttft-ms", repr(config.ttft_ms)]
    if config.tpot_ms is not None:
        argv += ["--tpot-ms", repr(config.tpot_ms)]
    env = dict(os.environ, GLMDEPLOY_SANDBOX_LOG=str(log_path))
    if config.api_key:
        env["GLMDEPLOY_SANDBOX_KEY"] = config.api_key
    with open(log_path, "ab") as log:
        child = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env,
                                 start_new_session=True, close_fds=True)
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        exit_code = child.poll()
        if exit_code is not None:
            raise SandboxError(f"the sandbox exited at start (code {exit_code}); see {log_path}")
        info = read_state()
        if info is not None and info.pid == child.pid and probe(info):
            return info, True
        time.sleep(0.05)
    child.terminate()
    with contextlib.suppress(subprocess.TimeoutExpired):
        child.wait(5)
    raise SandboxError(f"the sandbox did not come up within {START_TIMEOUT_S:.0f}s; see {log_path}")


def _alive(pid: int) -> bool:
    with contextlib.suppress(ChildProcessError):
        reaped, _ = os.waitpid(pid, os.WNOHANG)
        if reaped == pid:
            return False
    from glmdeploy.processes import pid_alive

    return pid_alive(pid)


def stop() -> SandboxInfo | None:
    """Stop the recorded sandbox; returns what was stopped, None when nothing was running."""
    info = read_state()
    if info is None:
        return None
    if not probe(info):
        # Stale record: the process is gone or is not ours. Never signal it.
        _remove_state_if(info.token)
        return None
    os.kill(info.pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT_S
    while time.monotonic() < deadline and _alive(info.pid):
        time.sleep(0.05)
    if _alive(info.pid):
        os.kill(info.pid, signal.SIGKILL)
        while _alive(info.pid) and time.monotonic() < deadline + 5:
            time.sleep(0.05)
    _remove_state_if(info.token)
    return info


def ensure_running(*, seed: int = 0, time_scale: float | None = None, faults: str | None = None,
                   port: int = 0) -> SandboxInfo:
    """The running sandbox of this GLMDEPLOY_HOME, started in the background if needed.

    A sandbox that already runs is reused as it is: the arguments only shape a new one.
    """
    info, _ = start_background(SandboxConfig(port=port, time_scale=time_scale, faults=faults, seed=seed))
    return info


@dataclass
class ThreadedSandbox:
    """A sandbox served from a background thread of this process (for tests)."""

    url: str
    api_key: str
    world: World
    loop: asyncio.AbstractEventLoop

    def call(self, coro: Any, timeout: float = 10.0) -> Any:
        """Run a coroutine on the sandbox's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)


@contextlib.contextmanager
def serve_in_thread(config: SandboxConfig | None = None) -> Iterator[ThreadedSandbox]:
    """Run the Vast API app on a free loopback port in a thread; stops engines and server on exit."""
    config = config or SandboxConfig()
    world = make_world(config)
    sock = bind(config.port)
    port = sock.getsockname()[1]
    server = _server(world)
    loop_box: dict[str, asyncio.AbstractEventLoop] = {}
    failure: list[BaseException] = []

    def run() -> None:
        async def main() -> None:
            loop_box["loop"] = asyncio.get_running_loop()
            await server.serve(sockets=[sock])

        try:
            asyncio.run(main())
        except BaseException as exc:
            failure.append(exc)

    thread = threading.Thread(target=run, name=f"sandbox-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + START_TIMEOUT_S
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.01)
    if not server.started:
        server.should_exit = True
        thread.join(5)
        sock.close()
        raise SandboxError(f"sandbox thread did not start: {failure[0] if failure else 'timeout'}")
    try:
        yield ThreadedSandbox(url=f"http://127.0.0.1:{port}", api_key=world.api_key, world=world,
                              loop=loop_box["loop"])
    finally:
        server.should_exit = True
        thread.join(STOP_TIMEOUT_S)
        sock.close()


def main(argv: list[str] | None = None) -> None:
    """Entry of the detached child: ``python -m glmdeploy.sandbox.process``."""
    parser = argparse.ArgumentParser(prog="glmdeploy-sandbox")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--time-scale", type=float, default=None)
    parser.add_argument("--faults", default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ttft-ms", type=float, default=None)
    parser.add_argument("--tpot-ms", type=float, default=None)
    args = parser.parse_args(argv)
    config = SandboxConfig(port=args.port, time_scale=args.time_scale, faults=args.faults, seed=args.seed,
                           api_key=os.environ.get("GLMDEPLOY_SANDBOX_KEY") or None,
                           ttft_ms=args.ttft_ms, tpot_ms=args.tpot_ms)
    try:
        run_foreground(config, announce=False)
    except SandboxError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
