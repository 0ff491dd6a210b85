"""Issue 13 §9: `error:` lines and failed/orphaned statuses are coloured on a terminal, plain under NO_COLOR."""

from __future__ import annotations

import subprocess
from collections.abc import Callable

import pytest

from .conftest import Sandbox
from .pty_screen import run_on_pty

Cli = Callable[..., subprocess.CompletedProcess[str]]
StartSandbox = Callable[..., Sandbox]

pytestmark = pytest.mark.e2e
RED_ERROR = "\x1b[1;31merror:\x1b[0m"


def _on_pty(env: dict[str, str], *args: str) -> tuple[int, str]:
    run = run_on_pty({**env, "TERM": "xterm-256color", "COLUMNS": "120"}, list(args))
    return run.code, run.screen


def test_error_lines_are_red_on_a_terminal_and_plain_under_no_color(cli_env: dict[str, str]) -> None:
    code, screen = _on_pty(cli_env, "up", "-p", "no-such-profile", "--yes")
    assert code == 2 and RED_ERROR in screen, repr(screen)
    code, screen = _on_pty({**cli_env, "NO_COLOR": "1"}, "up", "-p", "no-such-profile", "--yes")
    assert code == 2 and "error:" in screen and "\x1b[" not in screen, repr(screen)


def test_a_failed_deployment_is_red_in_list_and_status_and_plain_under_no_color(
    cli: Cli, cli_env: dict[str, str], sandbox: StartSandbox
) -> None:
    sb = sandbox(faults="engine_oom")
    cli("up", "-p", "2x5090", "--sandbox", "--name", "oom", "--timeout", "24h", check_exit=4)
    code, screen = _on_pty(cli_env, "list", "--all", "--sandbox")
    row = next(line for line in screen.splitlines() if "oom" in line)
    assert code == 0 and "\x1b[31m" in row, repr(screen)
    code, screen = _on_pty(cli_env, "status", "oom")
    assert "oom: \x1b[31mfailed\x1b[0m" in screen, repr(screen)
    for args in (("list", "--all", "--sandbox"), ("status", "oom")):
        code, screen = _on_pty({**cli_env, "NO_COLOR": "1"}, *args)
        assert "\x1b[3" not in screen and "failed" in screen, repr(screen)
    assert sb.running() == []
