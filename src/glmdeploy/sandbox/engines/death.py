"""``engine_death``: a serving engine whose core dies, and what each engine then does.

The N-th generation request after ready (the fault's value, default 1) finds the engine core dead.

- **vLLM** (recorded, real-vllm-0.24.0/engine-death.txt, EngineCore killed with SIGKILL): that request
  gets HTTP 500 while ``/health`` and ``/v1/models`` still answer 200; within about a second the whole
  API server process exits and the port refuses connections from then on. (engines.md §3.5 says
  ``/health`` turns 503 on a dead engine: the recording shows 200 until the process is gone, and the
  recording wins.) The 500's body is not in the recording; the sandbox sends vLLM's error envelope with
  ``EngineDeadError``'s message (vllm-project/vllm ``vllm/v1/engine/exceptions.py``).
- **SGLang** (source reading): the scheduler logs ``Scheduler hit an exception: <traceback>`` and sends
  SIGQUIT to the main process, whose handler logs ``Received sigquit from a child process. It usually
  means the child failed.`` and kills the whole process tree (engines.md §2.4, sgl59
  ``entrypoints/engine.py``; the running-phase handler is ``SignalHandler.running_phase_sigquit_handler``
  in ``srt/managers/tokenizer_manager.py``, read in the search index's copies, whose commit the index does
  not give; newer copies word it ``SIGQUIT received. signum=..., frame=.... It usually means one child
  failed.``, the sandbox prints the sgl59 wording of engines.md). So the port refuses at once and the
  request in flight drops. Nothing in glmdeploy keys on this wording: a dead engine is a refused port.
- **LightLLM** (source reading, ModelTC/lightllm @fc72ffab, ``lightllm/utils/health_check.py`` and
  ``lightllm/server/api_http.py``): nothing kills the HTTP server when the router dies (only the opt-in
  ``--health_monitor`` would). Generation requests never complete. ``/health`` keeps answering 200 from
  its last good check and probes in the background; each probe times out after ``HEALTH_TIMEOUT`` (100 s,
  growing by 100 s per failure) and logs ``Health check timeout! The failure count is: N``; only after
  more than ``HEALTH_FAILURE_THRESHOLD`` (3) failures does ``/health`` answer 503. The port stays open.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from glmdeploy.sandbox.engines.engine import SimulatedEngine

# vLLM: the API server was still alive 0.09 s after the 500 and gone by 1.02 s (engine-death.txt).
VLLM_EXIT_AFTER_S = 0.9
# LightLLM: HEALTH_TIMEOUT and HEALTH_FAILURE_THRESHOLD defaults (utils/health_check.py).
LIGHTLLM_HEALTH_TIMEOUT_S = 100.0
LIGHTLLM_FAILURE_THRESHOLD = 3
HOLD = -1  # EngineApp.on_generate: never answer this request


class DeathSequence:
    def __init__(self, engine: SimulatedEngine) -> None:
        self.engine = engine
        value = engine.faults.get("engine_death")
        try:
            self.at = max(1, int(value)) if value else 1
        except ValueError:
            self.at = 1
        self.count = 0
        self.died = asyncio.Event()
        # A test stepping through the death holds vLLM's exit here until it has looked at the moment
        # between the 500 and the exit (a fixed real delay races a loaded machine); None: the exit
        # comes VLLM_EXIT_AFTER_S simulated seconds later, scaled like the rest of the engine's life.
        self.exit_gate: asyncio.Event | None = None

    async def on_generate(self) -> int | None:
        kind = self.engine.config.kind
        if not self.died.is_set():
            self.count += 1
            if self.count < self.at:
                return None
            self.died.set()
            if kind == "sglang":
                self._sglang_lines()
        if kind == "vllm":
            return 500
        return HOLD  # SGLang: the process is being killed under it; LightLLM: the router never answers

    async def run(self) -> bool:
        """After ready: wait for the death, then play it out. True when the process exited."""
        engine = self.engine
        stopping = asyncio.ensure_future(engine._stopping.wait())
        died = asyncio.ensure_future(self.died.wait())
        try:
            await asyncio.wait({stopping, died}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
            died.cancel()
        if not self.died.is_set():
            return False
        kind = engine.config.kind
        if engine.first_sign_at is None:
            import time

            engine.first_sign_at = time.time()
        if kind == "vllm":
            if self.exit_gate is not None:
                await self.exit_gate.wait()
            elif not await engine._sleep(VLLM_EXIT_AFTER_S):
                return False
            await engine.kill()
            return True
        if kind == "sglang":
            await engine.kill()
            return True
        # LightLLM: /health stays 200 while the failed probes add up, then 503; the process lives on.
        for failures in range(1, LIGHTLLM_FAILURE_THRESHOLD + 2):
            if not await engine._sleep(LIGHTLLM_HEALTH_TIMEOUT_S * failures):
                return False
            engine.log(
                f"WARNING {engine.clock_now:%m-%d %H:%M:%S} [health_check.py:102] Health check timeout! "
                f"The failure count is: {failures}"
            )
        engine.app.health_override = 503
        return False

    def _sglang_lines(self) -> None:
        engine = self.engine
        ts = engine.clock_now
        stamp = f"[{ts:%Y-%m-%d %H:%M:%S}"
        for line in (
            f"{stamp} TP0] Scheduler hit an exception: Traceback (most recent call last):",
            '  File "/sgl-workspace/sglang/python/sglang/srt/managers/scheduler.py", line 3188, '
            "in run_scheduler_process",
            "    scheduler.event_loop_overlap()",
            "RuntimeError: CUDA error: an illegal memory access was encountered",
            "",
            f"{stamp}] Received sigquit from a child process. It usually means the child failed.",
        ):
            engine.log(line)
