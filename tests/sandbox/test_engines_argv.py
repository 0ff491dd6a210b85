"""The simulated engines are as strict as the real ones about argv and images (issue 9, item 3).

- argv is parsed against the same flag tables glmdeploy checks profiles with: a refused option prints
  argparse's error (the format recorded from a real vLLM 0.24.0) and the process exits; the port never opens
  and nothing more is logged, while the Vast instance stays ``running``;
- an engine image whose tag names no release fails the pull: the daemon's error in ``status_msg`` while
  ``actual_status`` stays ``loading``;
- an engine too old for glm4_moe_lite ends with the line the real one ends with.
"""

from __future__ import annotations

import asyncio
import re
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from glmdeploy.onstart import OnstartOptions, launch_argv, render
from glmdeploy.profiles import load_profile
from glmdeploy.profiles.model import Profile
from glmdeploy.sandbox.engines import EngineTiming, SimulatedEngine, launch_spec_from
from glmdeploy.sandbox.engines.argv import parse_error
from listeners import listening_here

RECORDED = Path(__file__).resolve().parents[3] / "shared" / "reference" / "real-vllm-0.24.0" / "argv-acceptance.txt"
KEY = "k" * 32


def recorded_lines(profile: str) -> list[str]:
    """The lines real vLLM 0.24.0 printed for a profile's argv, without the recorder's timestamps."""
    text = RECORDED.read_text(encoding="utf-8")
    block = text.split(f"== {profile}.log\n", 1)[1].split("\n== ", 1)[0]
    return [re.sub(r"^\s*[\d.]+ ", "", line) for line in block.splitlines() if line.strip()]


def _with(profile: Profile, **engine: Any) -> Profile:
    data = profile.model_dump()
    data["engine"].update(engine)
    return Profile.model_validate(data)


def old_argv(name: str) -> list[str]:
    """The argv the profile had before issue 9, on the image the recording ran (vLLM 0.24.0)."""
    profile = load_profile(name)
    if name == "2x5090":
        profile = _with(profile, swap_space_gb=16)
    if name == "mi300x":
        profile = _with(profile, image="vllm/vllm-openai:v0.15.1")  # the builder still emits the flag there
    return launch_argv(profile)


@pytest.mark.parametrize("name", ["2x5090", "mi300x"])
def test_refused_argv_prints_what_real_vllm_0_24_printed(name: str) -> None:
    assert parse_error("vllm", "vllm/vllm-openai:v0.24.0", old_argv(name)) == recorded_lines(name)


@pytest.mark.parametrize("name", ["2x5090-nvfp4", "4x4090d", "4xh200-glm47-fp8-mtp"])
def test_argv_real_vllm_0_24_accepted_is_accepted(name: str) -> None:
    assert "non-default args" in recorded_lines(name.replace("-glm47-fp8", ""))[0]
    assert parse_error("vllm", "vllm/vllm-openai:v0.24.0", launch_argv(load_profile(name))) is None


@pytest.mark.parametrize("name", ["2x5090", "2x5090-nvfp4", "4x3090", "4x4090d", "4xh200-glm47-fp8-mtp", "h200",
                                  "h200-mtp", "mi300x"])
def test_every_shipped_profile_parses_in_its_own_image(name: str) -> None:
    profile = load_profile(name)
    assert parse_error(profile.engine.kind, profile.engine.image, launch_argv(profile)) is None


def test_underscores_values_and_unknown_words_as_argparse_sees_them() -> None:
    argv = ["vllm", "serve", "m", "--max_model_len", "100", "--max-num-batched-tokens", "-1", "--bogus", "x", "y"]
    assert parse_error("vllm", "vllm/vllm-openai:v0.24.0", argv) == [
        "usage: main.py [-h] [-v]",
        "main.py: error: unrecognized arguments: --bogus x y",
    ]
    sglang = ["python3", "-m", "sglang.launch_server", "--model-path", "m", "--cuda-graph-max-bs", "8"]
    assert parse_error("sglang", "lmsysorg/sglang:v0.5.19", sglang) is None
    refused = parse_error("sglang", "lmsysorg/sglang:v0.5.23", sglang)
    assert refused is not None
    assert refused[1] == "launch_server.py: error: unrecognized arguments: --cuda-graph-max-bs 8"
    lightllm = ["python", "-m", "lightllm.server.api_server", "--model_dir", "/m", "--api-key", "k"]
    refused = parse_error("lightllm", "ghcr.io/modeltc/lightllm:v1.2.0", lightllm)
    assert refused is not None and refused[1] == "api_server.py: error: unrecognized arguments: --api-key k"


# ---------------------------------------------------------------- the engine process


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextmanager
def engine_for(profile: Profile) -> Iterator[tuple[SimulatedEngine, list[str], int]]:
    script = render(profile, OnstartOptions(deployment="t"))
    spec = launch_spec_from(profile.engine.image, script, {"GLM_API_KEY": KEY})
    assert spec is not None
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    port = free_port()
    lines: list[str] = []
    engine = SimulatedEngine(spec, port=port, log=lines.append, timing=EngineTiming(time_scale=0.001), faults={})
    task = asyncio.run_coroutine_threadsafe(engine.run(), loop)
    try:
        yield engine, lines, port
    finally:
        asyncio.run_coroutine_threadsafe(engine.stop(), loop).result(5)
        task.result(5)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()


def wait_crashed(engine: SimulatedEngine, lines: list[str]) -> None:
    deadline = time.monotonic() + 10
    while engine.state != "crashed":
        assert time.monotonic() < deadline, f"state {engine.state}; log tail {lines[-3:]}"
        time.sleep(0.005)


def refused(port: int) -> bool:
    """Nothing of this process listens there (a connect could reach another xdist worker's listener)."""
    return not listening_here(port)


def test_a_removed_flag_ends_the_engine_at_argument_parsing() -> None:
    profile = load_profile("2x5090-nvfp4")
    profile = _with(profile, extra_args=["--swap-space", "16"])
    with engine_for(profile) as (engine, lines, port):
        wait_crashed(engine, lines)
        assert lines[-2:] == ["usage: main.py [-h] [-v]", "main.py: error: unrecognized arguments: --swap-space 16"]
        assert not any("vLLM API server version" in line for line in lines)  # nothing of the engine ran
        assert refused(port)
        count = len(lines)
        time.sleep(0.05)  # a silent log: nothing more is written (the sleep is far above the whole startup)
        assert len(lines) == count


def test_an_image_too_old_for_glm4_moe_lite_ends_with_the_transformers_error() -> None:
    profile = _with(load_profile("mi300x"), image="vllm/vllm-openai-rocm:v0.15.1")
    with engine_for(profile) as (engine, lines, port):
        wait_crashed(engine, lines)
        assert "does not recognize this architecture" in lines[-1] and "glm4_moe_lite" in lines[-1]
        assert refused(port)
    from glmdeploy.engines import get_engine

    signature = get_engine("vllm").classify_failure("\n".join(lines))
    assert signature is not None and signature.kind == "unsupported_arch"


# ---------------------------------------------------------------- the Vast side


def test_an_unknown_engine_tag_fails_the_pull_and_stays_loading(start_sandbox: Any, client_for: Any) -> None:
    vast = client_for(start_sandbox())
    image = "vllm/vllm-openai:v9.9.9"
    instance_id = vast.rent(image=image)
    deadline = time.monotonic() + 10
    row = vast.show(instance_id)
    while not (row and row["status_msg"] and "manifest" in row["status_msg"]):
        assert time.monotonic() < deadline, row
        time.sleep(0.02)
        row = vast.show(instance_id)
    assert row["actual_status"] == "loading"
    assert row["status_msg"] == (
        f"Error response from daemon: manifest for {image} not found: manifest unknown: manifest unknown"
    )
    time.sleep(0.3)  # longer than a whole lifecycle at this scale: it never gets to running
    row = vast.show(instance_id)
    assert row["actual_status"] == "loading" and row["ports"] is None


def test_a_refused_flag_leaves_the_instance_running_with_a_silent_log(start_sandbox: Any, client_for: Any) -> None:
    vast = client_for(start_sandbox())
    profile = _with(load_profile("2x5090-nvfp4"), extra_args=["--swap-space", "16"])
    onstart = render(profile, OnstartOptions(deployment="t"))
    instance_id = vast.rent(image=profile.engine.image, onstart=onstart, env={"-p 8000:8000": "1", "GLM_API_KEY": KEY})
    vast.wait_status(instance_id, "running")
    deadline = time.monotonic() + 10
    log = vast.logs(instance_id)
    while "unrecognized arguments" not in log:
        assert time.monotonic() < deadline, log[-300:]
        time.sleep(0.02)
        log = vast.logs(instance_id)
    assert log.rstrip().endswith("main.py: error: unrecognized arguments: --swap-space 16")
    assert vast.show(instance_id)["actual_status"] == "running"
