"""Rows of docs/troubleshooting.md's table that no other CLI test reached (issue 10 §5): each through the
real CLI, with its message, its exit code and nothing left running."""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Callable

from .conftest import Sandbox

Cli = Callable[..., subprocess.CompletedProcess[str]]
StartSandbox = Callable[..., Sandbox]


def one_error_line(proc: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in proc.stderr and "internal error" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, proc.stderr
    return lines[0]


def test_vast_that_kept_failing_exits_7_and_rents_nothing(cli: Cli, sandbox: StartSandbox) -> None:
    sb = sandbox(faults="http5xx:search")
    proc = cli("up", "-p", "4x3090", "--sandbox", "--yes")
    assert proc.returncode == 7
    assert "kept failing" in one_error_line(proc)
    assert sb.ledger()["instances"] == []


def test_vast_unreachable_exits_7(cli: Cli) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = cli("offers", "-p", "4x3090", "--api-url", f"http://127.0.0.1:{port}", "--api-key", "k")
    assert proc.returncode == 7
    assert "cannot reach Vast.ai" in one_error_line(proc)


def test_an_instance_that_exits_with_a_docker_error_exits_4_and_is_destroyed(cli: Cli, sandbox: StartSandbox) -> None:
    sb = sandbox(faults="exited=1,msg=Error response from daemon: pull access denied")
    proc = cli("up", "-p", "4x3090", "--sandbox", "--yes")
    assert proc.returncode == 4, proc.stderr
    line = one_error_line(proc)
    assert line.startswith("error: image failed: image_pull: ") and "pull access denied" in line, line
    assert sb.running() == []
