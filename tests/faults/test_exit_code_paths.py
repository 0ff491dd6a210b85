"""docs/troubleshooting.md rows that no other test ran through the CLI (issue 10 §5, last bullet).

In-process against a threaded sandbox (tests/faults/conftest.py), like the fault matrix: each test runs
the real command, asserts the documented exit code and the row's message in the one ``error:`` line, and
that nothing bills afterwards.
"""

from __future__ import annotations

from typing import Any

import pytest

from waits import LONG_TIMEOUT

from .conftest import LONG_TTL, InProcess, Outcome

pytestmark = pytest.mark.e2e


def one_error_line(out: Outcome, code: int) -> str:
    assert out.exit_code == code, out.describe()
    ours = [line for line in out.stderr.splitlines() if not line.startswith("  | ")]
    assert not any("Traceback" in line or "internal error" in line for line in ours), out.describe()
    [line] = out.error_lines()
    return line


def nothing_bills(w: InProcess) -> None:
    assert w.admin.live() == [], w.admin.ledger()


def test_an_image_that_cannot_load_the_model_is_refused_and_forced_fails_as_unsupported_arch(
    in_process: Any,
) -> None:
    w: InProcess = in_process()
    args = (
        "up",
        "-p",
        "4x3090",
        "--image",
        "lmsysorg/sglang:v0.5.4",
        "--sandbox",
        "--yes",
        "--ttl",
        LONG_TTL,
        *LONG_TIMEOUT,
    )
    refused = one_error_line(w.glm(*args), 2)
    assert "cannot load this model; the engine would end with:" in refused and "--force" in refused
    assert w.admin.ledger()["instances"] == []  # refused before anything was rented
    forced = one_error_line(w.glm(*args, "--force"), 4)
    assert forced.startswith("error: engine failed: unsupported_arch"), forced
    assert len(w.admin.ledger()["instances"]) == 1
    nothing_bills(w)


def test_an_interrupt_whose_destroy_fails_leaves_an_orphan_and_says_so(
    in_process: Any, cli_env: dict[str, str]
) -> None:
    """`...: the instance could not be destroyed` (exit 130) with `hint: an instance may still be billing`:
    SIGTERM during wait_ready while every destroy is refused (500, not retried). The record is orphaned, and
    the `destroy --orphans` the hint names removes the instance once Vast.ai answers again."""
    import signal
    import subprocess

    from waits import EventStream

    from .conftest import GLMDEPLOY, state_rows

    w: InProcess = in_process(faults="never_ready;http5xx:destroy,status=500")
    proc = subprocess.Popen(
        [
            *GLMDEPLOY,
            "up",
            "-p",
            "4x3090",
            "--sandbox",
            "--yes",
            "--json",
            "--name",
            "stuck",
            "--ttl",
            LONG_TTL,
            *LONG_TIMEOUT,
        ],
        env=cli_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    try:
        EventStream(proc).expect_phase("wait_ready")
        assert len(w.admin.live()) == 1
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=10)
    out = Outcome(("up",), proc.returncode, "", stderr)
    line = one_error_line(out, 130)
    assert line == "error: interrupted: the instance could not be destroyed", out.describe()
    assert "hint: an instance may still be billing" in stderr and "destroy --orphans" in stderr, stderr
    assert [r["status"] for r in state_rows(w.home)] == ["orphaned"]
    assert len(w.admin.live()) == 1  # the destroy really was refused: this is what the hint is about
    w.admin.set_faults("")
    swept = w.glm("destroy", "--orphans", "--yes")
    assert swept.exit_code == 0, swept.describe()
    nothing_bills(w)
