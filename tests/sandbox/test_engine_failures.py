"""The simulated engines' launch failures and deaths after ready (issue 9 item 3), engine by engine.

vLLM 0.24.0's death is checked against its recording in tests/conformance; here SGLang's and LightLLM's
follow their sources (sandbox/engines/death.py), and every launch fault prints its failure's text and
exits with the port refusing.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import httpx
import pytest

from glmdeploy.engines import get_engine
from glmdeploy.sandbox.engines import EngineTiming, SimulatedEngine, launch_spec_from
from listeners import listening_here

pytestmark = pytest.mark.e2e

SCALE = 0.0005
KEY = "k-test"
SCRIPTS = {
    "sglang": ("lmsysorg/sglang:dev-pr-17247",
               "exec python3 -m sglang.launch_server --model-path zai-org/GLM-4.7-Flash --served-model-name "
               'glm-4.7-flash --host 0.0.0.0 --port 8000 --api-key "${GLM_API_KEY}"'),
    "vllm": ("vllm/vllm-openai:v0.24.0",
             'export VLLM_API_KEY="${GLM_API_KEY}"\nexec vllm serve zai-org/GLM-4.7-Flash '
             "--served-model-name glm-4.7-flash --port 8000"),
    "lightllm": ("ghcr.io/modeltc/lightllm:v1.2.0",
                 "exec python -m lightllm.server.api_server --model_dir /workspace/models/GLM-4.7-Flash "
                 "--host 0.0.0.0 --port 8000"),
}
BODY = {"model": "glm-4.7-flash", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}


class Live:
    def __init__(self, engine: SimulatedEngine, port: int, lines: list[str]) -> None:
        self.engine, self.port, self.lines = engine, port, lines

    def wait(self, predicate: Callable[[], bool], timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            assert time.monotonic() < deadline, f"state={self.engine.state}; tail={self.lines[-5:]}"
            time.sleep(0.002)

    def client(self, timeout: float = 5.0) -> httpx.Client:
        return httpx.Client(base_url=f"http://127.0.0.1:{self.port}", headers={"Authorization": f"Bearer {KEY}"},
                            timeout=timeout, trust_env=False)

    def refused(self) -> bool:
        """Nothing of this process listens there (a connect could reach another xdist worker's listener)."""
        return not listening_here(self.port)


@contextmanager
def running(kind: str, faults: dict[str, str | None]) -> Iterator[Live]:
    image, body = SCRIPTS[kind]
    spec = launch_spec_from(image, f"#!/bin/bash\n{body}\n", {"GLM_API_KEY": KEY})
    assert spec is not None
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    lines: list[str] = []
    engine = SimulatedEngine(spec, port=port, log=lines.append, timing=EngineTiming(time_scale=SCALE), faults=faults)
    task = asyncio.run_coroutine_threadsafe(engine.run(), loop)
    try:
        yield Live(engine, port, lines)
    finally:
        asyncio.run_coroutine_threadsafe(engine.stop(), loop).result(5)
        task.result(5)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()


LAUNCH = {
    "argparse_error": "argparse_error",
    "no_module": "no_module",
    "command_not_found": "command_not_found",
    "hf_gated": "gated_repo",
    "hf_missing": "gated_repo",
    "disk_full": "disk_full",
    "nccl_error": "nccl",
    "no_kernel_image": "no_kernel_image",
    "kv_does_not_fit": "kv_does_not_fit",
}


@pytest.mark.parametrize("kind", ["sglang", "vllm", "lightllm"])
@pytest.mark.parametrize("fault", sorted(LAUNCH))
def test_launch_faults_print_their_failure_and_exit(kind: str, fault: str) -> None:
    with running(kind, {fault: None}) as e:
        e.wait(lambda: e.engine.state == "crashed")
        assert e.engine.first_sign_at is not None
        assert e.refused()
        named = [s.kind for line in e.lines if (s := get_engine(kind).classify_failure(line)) is not None]
        assert named and named[0] == LAUNCH[fault], (named, e.lines[-6:])


def test_sglang_death_kills_the_process_tree_at_once() -> None:
    with running("sglang", {"engine_death": "1"}) as e:
        e.wait(lambda: e.engine.state == "serving")
        with e.client() as c, pytest.raises(httpx.HTTPError):
            c.post("/v1/chat/completions", json=BODY)  # the request in flight drops with the process
        e.wait(e.refused)
        assert e.engine.state == "crashed"
        assert any("Scheduler hit an exception" in line for line in e.lines)
        assert any("Received sigquit from a child process. It usually means the child failed." in line
                   for line in e.lines)


def test_lightllm_death_keeps_the_server_up_health_200_then_503() -> None:
    with running("lightllm", {"engine_death": "1"}) as e:
        e.wait(lambda: e.engine.state == "serving")
        with e.client(timeout=0.3) as c:
            with pytest.raises(httpx.ReadTimeout):
                c.post("/v1/chat/completions", json=BODY)  # the router is gone: no answer ever comes
            assert c.get("/health").status_code == 200  # the last good check still stands
            assert not e.refused()
            e.wait(lambda: sum("Health check timeout! The failure count is:" in line for line in e.lines) == 4)
            e.wait(lambda: c.get("/health").status_code == 503)
        assert not e.refused() and e.engine.state == "serving"  # the HTTP server process lives on


def test_engine_exit_drops_the_first_request_then_refuses() -> None:
    with running("sglang", {"engine_exit": None}) as e:
        e.wait(lambda: not e.refused())  # the port opened
        lines_before = len(e.lines)
        with e.client() as c, pytest.raises(httpx.HTTPError):
            c.get("/health")
        e.wait(e.refused)
        assert e.engine.state == "crashed" and len(e.lines) == lines_before  # nothing more is logged
