"""``SimulatedEngine``: one engine process inside a sandbox instance, from first log line to stop."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import random
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import formatdate
from typing import Any

from glmdeploy.sandbox.engines.config import EngineConfig, engine_config
from glmdeploy.sandbox.engines.death import DeathSequence
from glmdeploy.sandbox.engines.dialects import dialect_for
from glmdeploy.sandbox.engines.failures import LAUNCH_FAULTS, failure_plan
from glmdeploy.sandbox.engines.launch import LaunchSpec
from glmdeploy.sandbox.engines.logs import Milestone, startup_plan
from glmdeploy.sandbox.engines.server import EngineApp, status_phrase

ENGINE_FAULTS: frozenset[str] = frozenset(
    {
        "engine_oom",  # startup crashes with the engine's CUDA OOM log; port never opens
        "never_ready",  # startup stalls before the ready marker forever; port per engine semantics
        "health_flap",  # once serving, /health alternates 200/503
        "slow_first_token",  # value = seconds (real seconds, not scaled) added before the first streamed token
        "broken_tool_parser",  # tool_calls[].function.arguments is not valid JSON
        "reasoning_leak",  # reasoning text appears inside content instead of the reasoning field
        "no_done",  # streams end without `data: [DONE]`
        "no_auth",  # the endpoint does not enforce the API key
        # the port presents a certificate other than the one the host logged (a man in the middle)
        "tls_intercept",
        "models_before_health",  # /v1/models answers 200 while /health stays 503 (SGLang-like warmup that never ends)
        # value = the N-th generation request after ready (default 1) kills the engine; what follows is
        # each engine's own death sequence (death.py)
        "engine_death",
        # the engine's port opens as usual; the first request it receives kills the process (the
        # connection drops, the port refuses from then on, nothing more is logged)
        "engine_exit",
        # value = the download speed in Mbit/s (default: the rented offer's inet_down, set by the world),
        # instead of the sandbox's 4000 Mbit/s: a download that takes as long as a real one, for progress displays
        "slow_download",
        *LAUNCH_FAULTS,  # launches that die before serving (failures.py)
    }
)


@dataclass(frozen=True)
class EngineTiming:
    time_scale: float = 0.005  # real seconds per simulated second of startup (download/load/graphs)
    ttft_s: float = 0.0  # extra real seconds before the first token
    tpot_s: float = 0.0  # real seconds between tokens when streaming
    seed: int = 0


class _Clock:
    """Log timestamps: simulated time during startup, then wall time shifted to continue from it."""

    def __init__(self) -> None:
        self._start = datetime.now(UTC).replace(tzinfo=None)
        self._elapsed = 0.0
        self._offset: timedelta | None = None

    def advance(self, seconds: float) -> None:
        self._elapsed += seconds

    def settle(self) -> None:
        if self._offset is None:
            self._offset = self._start + timedelta(seconds=self._elapsed) - datetime.now(UTC).replace(tzinfo=None)

    def now(self) -> datetime:
        if self._offset is None:
            return self._start + timedelta(seconds=self._elapsed)
        return datetime.now(UTC).replace(tzinfo=None) + self._offset


class SimulatedEngine:
    """A fake SGLang, vLLM or LightLLM process: real log lines, real sockets, no GPU."""

    def __init__(
        self,
        spec: LaunchSpec,
        *,
        port: int,
        log: Callable[[str], None],
        timing: EngineTiming,
        faults: Mapping[str, str | None],
        sock: socket.socket | None = None,
        gpu_name: str | None = None,
        gpu_ram_mib: int | None = None,
    ) -> None:
        self.spec = spec
        # A socket already bound to `port` (the sandbox's reservation); taken over instead of binding anew.
        self._reserved = sock
        self.port = port
        self.timing = timing
        self.faults = {k: v for k, v in faults.items() if k in ENGINE_FAULTS}
        # The offer's GPU sizes the KV pool with the engines' memory formulas (plus a seeded deviation).
        self.config: EngineConfig = engine_config(spec, gpu_name=gpu_name, gpu_ram_mib=gpu_ram_mib, seed=timing.seed)
        self._log = log
        self._state = "starting"
        # Wall-clock time the ready marker was logged (for benchmarks measuring detection delay).
        self.ready_at: float | None = None
        # Wall-clock time of the first sign of a fault a client could see (a crash logged, the port closed).
        self.first_sign_at: float | None = None
        self._stopping = asyncio.Event()
        self._clock = _Clock()
        self._rng = random.Random(f"{timing.seed}:{spec.kind}:{spec.served_model}")
        self._pid = self._rng.randint(200, 900)
        self._sock: socket.socket | None = None
        self._server: asyncio.Server | None = None
        self._server_state: Any = None
        self.app = EngineApp(
            self.config,
            dialect_for(self.config),
            faults=self.faults,
            seed=timing.seed,
            ttft_s=timing.ttft_s,
            tpot_s=timing.tpot_s,
            time_scale=timing.time_scale,
            access_log=self._access_log,
            on_request=self._traffic_line,
        )
        self._stats_task: asyncio.Task[None] | None = None
        # Test hook: startup points ("start", or a milestone's value such as "listen") where run()
        # waits for resume(), so a test can look at a state (port still refused, SGLang's 503 warmup)
        # for as long as it needs instead of racing its simulated length. Set it before run().
        self.pause_at: set[str] = set()
        self.paused_at: str | None = None
        self._resume = asyncio.Event()
        # The proxy's certificate (onstart's openssl), the one the log reports; under tls_intercept the
        # port presents another one. Handshakes count every TLS ClientHello the port received.
        self.certificate: Any = None
        self.presented_certificate: Any = None
        self.handshakes = 0
        self.death = DeathSequence(self) if "engine_death" in self.faults else None
        if self.death is not None:
            self.app.on_generate = self.death.on_generate

    @property
    def state(self) -> str:
        return self._state

    # ------------------------------------------------------------------ lifecycle

    async def run(self) -> None:
        """Write the startup log through ``log`` over simulated time, open the port when the real engine
        would, and serve until ``stop()``. Returns after logging the crash if a fault kills it."""
        try:
            if self._stopping.is_set() or not await self._pause("start"):
                return
            if self.spec.proxy is not None:
                if self.spec.proxy.tls:
                    self._make_certificate()
                if not await self._listen():  # nginx starts before the engine and holds the port
                    return
            elif self.config.kind in ("vllm", "lightllm") and not self._bind():
                return  # both check their port before anything else (engines.md §3.3 step 2, §4.3 step 1)
            plan = failure_plan(self.config, self.faults, self._rng, self._pid)
            if plan is None:
                plan = startup_plan(self.config, self.faults, self._rng, self._pid)
            for step in plan:
                if step.after_s > 0 and not await self._sleep(step.after_s):
                    return
                self._clock.advance(step.after_s)
                if step.render is not None:
                    for line in step.render(self._clock.now()):
                        self._log(line)
                if step.milestone is Milestone.LISTEN:
                    if self.spec.proxy is None and not await self._listen():
                        return
                    self.app.upstream_up = True
                    if not await self._pause(Milestone.LISTEN.value):
                        return
                    if "engine_exit" in self.faults:
                        await self._exit_at_first_request()
                        return
                elif step.milestone is Milestone.READY:
                    self._clock.settle()
                    self._state = "serving"
                    self.ready_at = time.time()
                    self.app.ready.set()
                    if self.config.kind == "vllm":
                        self._stats_task = asyncio.create_task(self._vllm_stats())
                    elif self.config.kind == "sglang":
                        self._stats_task = asyncio.create_task(self._sglang_decode_log())
                elif step.milestone is Milestone.CRASH:
                    self._state = "crashed"
                    self.first_sign_at = time.time()
                    return
                elif step.milestone is Milestone.STALL:
                    break
            self._clock.settle()
            if self.death is not None:
                if await self.death.run():
                    self._state = "crashed"
                    return
            await self._stopping.wait()
        finally:
            # Left by stop(), a crash, or the task being cancelled: in every case nothing listens any more.
            await self._close()
            if self._state != "crashed":
                self._state = "stopped"

    async def _exit_at_first_request(self) -> None:
        """``engine_exit``: serve nothing; the first request that arrives finds the process dying."""
        self.app.hold_requests = True
        stop = asyncio.ensure_future(self._stopping.wait())
        first = asyncio.ensure_future(self.app.first_request.wait())
        try:
            await asyncio.wait({stop, first}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
            first.cancel()
        if not self._stopping.is_set():
            self._state = "crashed"
            self.first_sign_at = time.time()

    async def kill(self) -> None:
        """The process tree exits now: the port closes and every open connection drops."""
        self._state = "crashed"
        if self.first_sign_at is None:
            self.first_sign_at = time.time()
        await self._close()

    def log(self, line: str) -> None:
        self._log(line)

    @property
    def clock_now(self) -> datetime:
        return self._clock.now()

    @property
    def pid(self) -> int:
        return self._pid

    async def stop(self) -> None:
        """Close the listening socket and all connections; idempotent."""
        self._stopping.set()
        await self._close()
        if self._state != "crashed":
            self._state = "stopped"

    def resume(self) -> None:
        """Let a startup paused at one of ``pause_at`` go on (call it on the engine's event loop)."""
        self._resume.set()

    async def _pause(self, point: str) -> bool:
        """Wait at ``point`` until resume() if a test asked to; False when stopped meanwhile."""
        if point not in self.pause_at:
            return True
        self.paused_at = point
        waits = {asyncio.ensure_future(self._resume.wait()), asyncio.ensure_future(self._stopping.wait())}
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in waits:
                task.cancel()
            self._resume.clear()
            self.paused_at = None
        return not self._stopping.is_set()

    async def _sleep(self, simulated_s: float) -> bool:
        """Wait out simulated time; False when stopped meanwhile."""
        try:
            await asyncio.wait_for(self._stopping.wait(), simulated_s * self.timing.time_scale)
        except TimeoutError:
            return True
        return False

    # ------------------------------------------------------------------ sockets

    def _bind(self) -> bool:
        if self._sock is not None:
            return True
        if self._reserved is not None:
            sock, self._reserved = self._reserved, None
            sock.setblocking(False)
            self._sock = sock
            return True
        # IPPROTO_TCP explicitly: asyncio only sets TCP_NODELAY on sockets whose proto says TCP, and
        # without it each small SSE write on a kept-alive connection waits ~40 ms for a delayed ACK.
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", self.port))
        except OSError as exc:
            sock.close()
            self._port_in_use(exc)
            return False
        sock.setblocking(False)
        self._sock = sock
        return True

    def _port_in_use(self, exc: OSError) -> None:
        cfg = self.config
        ts = self._clock.now()
        if exc.errno != errno.EADDRINUSE:
            self._log(f"OSError: {exc}")
        elif self.spec.proxy is not None:
            port = self.spec.proxy.listen_port
            self._log(f"nginx: [emerg] bind() to 0.0.0.0:{port} failed (98: Address already in use)")
            self._log("glmdeploy: nginx failed to start")
        elif cfg.kind == "sglang":
            self._log(
                f"[{ts:%Y-%m-%d %H:%M:%S}] ERROR:    [Errno 98] error while attempting to bind on address "
                f"('{cfg.host}', {cfg.port}): address already in use"
            )
        elif cfg.kind == "vllm":
            self._log("OSError: [Errno 98] Address already in use")
        else:
            self._log(f"RuntimeError: port {cfg.port} has been used")
        self._state = "crashed"

    async def _listen(self) -> bool:
        import uvicorn
        from uvicorn.server import ServerState

        if not self._bind():
            return False
        assert self._sock is not None
        self._sock.listen(2048)
        server_header = self.app.dialect.server_header is None
        config = uvicorn.Config(
            self.app, lifespan="off", access_log=False, log_config=None, http="h11", server_header=server_header
        )
        config.load()
        state = ServerState()
        state.default_headers = [(b"date", formatdate(usegmt=True).encode()), *config.encoded_headers]
        self.app.server_state = state
        loop = asyncio.get_running_loop()

        protocol_class: Any = config.http_protocol_class

        def protocol() -> asyncio.Protocol:
            proto: asyncio.Protocol = protocol_class(config=config, server_state=state, app_state={})
            return proto

        self._server_state = state
        ssl_context = None
        if self.presented_certificate is not None:
            ssl_context = self.presented_certificate.server_context()

            def hello(_sock: Any, _name: str | None, _ctx: Any) -> None:
                self.handshakes += 1

            ssl_context.sni_callback = hello
        self._server = await loop.create_server(protocol, sock=self._sock, ssl=ssl_context)
        return True

    def _make_certificate(self) -> None:
        from glmdeploy.sandbox.engines.tls import generate

        assert self.spec.proxy is not None
        self.certificate = generate(self.spec.proxy.san_ip)
        self.presented_certificate = self.certificate
        if "tls_intercept" in self.faults:
            self.presented_certificate = generate(self.spec.proxy.san_ip)
        self._log(self.certificate.log_line())

    async def _close(self) -> None:
        stats, self._stats_task = self._stats_task, None
        if stats is not None:
            stats.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await stats
        reserved, self._reserved = self._reserved, None
        if reserved is not None:
            reserved.close()
        server, self._server = self._server, None
        sock, self._sock = self._sock, None
        if server is not None:
            server.close()
        elif sock is not None:
            sock.close()
        state = self._server_state
        if state is not None:
            for connection in list(state.connections):
                transport = getattr(connection, "transport", None)
                if transport is not None:
                    transport.close()
            for task in list(state.tasks):
                task.cancel()
            with contextlib.suppress(Exception):
                await asyncio.gather(*list(state.tasks), return_exceptions=True)
        if server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 2.0)

    # ------------------------------------------------------------------ logging

    # vLLM's stat logger reports every 10 s while there is traffic (engines.md §3.3 step 12).
    STATS_INTERVAL_S = 10.0

    # SGLang's scheduler lines, as 0.5.8 writes them (the profile's dev-pr-17247 is read as 0.5.8;
    # glmdeploy.engines.sglang_log_load cites the source): a Prefill line per admitted request, and a
    # Decode line every 40 decode steps while anything runs, silence when idle. Here the Decode line comes
    # once per this many real seconds while requests run (held ones included, as /metrics counts them).
    DECODE_LOG_INTERVAL_S = 1.0

    def _traffic_line(self, prompt_tokens: int, running: int) -> None:
        if self.config.kind != "sglang":
            return
        if running > max(1, self.config.max_running_requests):
            return  # over --max-running-requests it waits in the queue: no prefill for it (yet)
        _running, waiting, usage = self.app.load()
        # #running-req is the decode batch without the request being prefilled (running_bs).
        self._log(
            f"[{self._clock.now():%Y-%m-%d %H:%M:%S} TP0] Prefill batch, #new-seq: 1, #new-token: {prompt_tokens}, "
            f"#cached-token: 0, token usage: {usage:.2f}, #running-req: {running - 1}, #queue-req: {waiting}, "
        )

    async def _sglang_decode_log(self) -> None:
        app = self.app
        seen_generated = app.generated_tokens_total
        while True:
            await asyncio.sleep(self.DECODE_LOG_INTERVAL_S)
            generated, seen_generated = app.generated_tokens_total - seen_generated, app.generated_tokens_total
            running, waiting, usage = app.load()
            if not running:
                continue  # an idle scheduler logs nothing
            self._log(
                f"[{self._clock.now():%Y-%m-%d %H:%M:%S} TP0] Decode batch, #running-req: {running}, "
                f"#token: {app.kv_tokens_in_use}, token usage: {usage:.2f}, cuda graph: True, "
                f"gen throughput (token/s): {generated / self.DECODE_LOG_INTERVAL_S:.2f}, #queue-req: {waiting}, "
            )

    async def _vllm_stats(self) -> None:
        app = self.app
        seen_prompt, seen_generated = app.prompt_tokens_total, app.generated_tokens_total
        while True:
            await asyncio.sleep(self.STATS_INTERVAL_S)
            prompt = app.prompt_tokens_total - seen_prompt
            generated = app.generated_tokens_total - seen_generated
            seen_prompt, seen_generated = app.prompt_tokens_total, app.generated_tokens_total
            if not prompt and not generated and not app.running:
                continue
            interval = self.STATS_INTERVAL_S
            usage = 100.0 * min(1.0, app.running * 1024 / max(1, self.config.kv_tokens))
            self._log(
                f"(APIServer pid={self._pid}) INFO {self._clock.now():%m-%d %H:%M:%S} [loggers.py:236] "
                f"Avg prompt throughput: {prompt / interval:.1f} tokens/s, "
                f"Avg generation throughput: {generated / interval:.1f} tokens/s, Running: {app.running} reqs, "
                f"Waiting: 0 reqs, GPU KV cache usage: {usage:.1f}%, Prefix cache hit rate: 0.0%"
            )

    def _access_log(self, method: str, path: str, client: str, status: int) -> None:
        kind = self.config.kind
        if kind == "lightllm":
            self._log(f"INFO {self._clock.now():%m-%d %H:%M:%S} [api_http.py:154] {method} {path} {status}")
            return
        line = f'INFO:     {client} - "{method} {path} HTTP/1.1" {status} {status_phrase(status)}'
        if kind == "sglang":
            self._log(f"[{self._clock.now():%Y-%m-%d %H:%M:%S}] {line}")
        else:
            self._log(f"(APIServer pid={self._pid}) {line}")
