"""Issue 9 acceptance, end to end on the sandbox: a profile with a flag its engine refuses.

``up`` refuses it before renting (exit 2, one line naming the flag and the version). With ``--force`` it
rents, the simulated vLLM 0.24.0 exits at argument parsing with the recorded argparse error, and ``up``
must notice, destroy the instance and say why, well within a minute.

The forced run relies on ``up``'s fail-fast classification of argparse errors (the ``failfast`` work,
``LAUNCH_FAILURES`` in engines/base.py): without it ``up`` would wait out the readiness timeout, so the
test skips itself when that classification is absent.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

import glmdeploy.engines.base as engine_base

from .conftest import Sandbox

Cli = Callable[..., subprocess.CompletedProcess[str]]
StartSandbox = Callable[..., Sandbox]

pytestmark = pytest.mark.e2e


def swap_space_profile(home: Path) -> Path:
    path = home / "swap.yaml"
    path.write_text('extends: 2x5090-nvfp4\nname: swap\nengine:\n  extra_args: ["--swap-space", "16"]\n',
                    encoding="utf-8")
    return path


def test_up_refuses_a_removed_flag_before_renting(cli: Cli, sandbox: StartSandbox, isolated_env: Path) -> None:
    sb = sandbox()
    up = cli("up", "--profile", str(swap_space_profile(isolated_env)), "--sandbox", "--yes", check_exit=2)
    lines = [line for line in up.stderr.splitlines() if line.strip()]
    assert lines == [
        "error: --swap-space is not accepted by vLLM 0.24.0 (removed in 0.18.0), the engine of image "
        "vllm/vllm-openai:v0.24.0; --force rents anyway"
    ]
    assert sb.ledger()["instances"] == []  # nothing was rented


def test_up_refuses_an_unknown_image_tag_and_the_sandbox_fails_its_pull(
    cli: Cli, sandbox: StartSandbox
) -> None:
    sb = sandbox()
    image = "vllm/vllm-openai:v9.9.9"
    plan = cli("plan", "--profile", "2x5090-nvfp4", "--image", image, check_exit=0)
    assert f"warning: image tag of {image} names no known vLLM release: its version is not known" in plan.stderr
    up = cli("up", "--profile", "2x5090-nvfp4", "--image", image, "--sandbox", "--yes", check_exit=2)
    assert "its version is not known; --force rents anyway" in up.stderr
    assert sb.ledger()["instances"] == []


@pytest.mark.skipif(
    not hasattr(engine_base, "LAUNCH_FAILURES"),
    reason="needs up's fail-fast classification of argparse errors (the failfast branch)",
)
def test_forced_up_with_a_removed_flag_fails_within_a_minute_and_leaves_nothing(
    cli: Cli, sandbox: StartSandbox, isolated_env: Path
) -> None:
    sb = sandbox()
    started = time.monotonic()
    up = cli("up", "--profile", str(swap_space_profile(isolated_env)), "--sandbox", "--yes", "--force", timeout=90)
    elapsed = time.monotonic() - started
    assert up.returncode == 4, up.stderr
    assert elapsed < 60, elapsed
    assert "--swap-space" in up.stderr
    assert "warning: --swap-space is not accepted by vLLM 0.24.0" in up.stderr  # --force said what it overrode
    assert sb.running() == []


@pytest.mark.skipif(
    not hasattr(engine_base, "LAUNCH_FAILURES"),
    reason="needs up's fail-fast classification of pull errors (the failfast branch)",
)
def test_forced_up_with_an_unknown_tag_fails_as_a_pull_error_and_leaves_nothing(
    cli: Cli, sandbox: StartSandbox
) -> None:
    sb = sandbox()
    image = "vllm/vllm-openai:v9.9.9"
    up = cli("up", "--profile", "2x5090-nvfp4", "--image", image, "--sandbox", "--yes", "--force", timeout=90)
    assert up.returncode == 4, up.stderr
    assert f"manifest for {image} not found" in up.stderr
    assert "warning: image tag of vllm/vllm-openai:v9.9.9 names no known vLLM release" in up.stderr
    assert sb.running() == []
