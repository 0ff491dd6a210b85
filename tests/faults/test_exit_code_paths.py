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
    args = ("up", "-p", "4x3090", "--image", "lmsysorg/sglang:v0.5.4", "--sandbox", "--yes", "--ttl", LONG_TTL,
            *LONG_TIMEOUT)
    refused = one_error_line(w.glm(*args), 2)
    assert "cannot load this model; the engine would end with:" in refused and "--force" in refused
    assert w.admin.ledger()["instances"] == []  # refused before anything was rented
    forced = one_error_line(w.glm(*args, "--force"), 4)
    assert forced.startswith("error: engine failed: unsupported_arch"), forced
    assert len(w.admin.ledger()["instances"]) == 1
    nothing_bills(w)
