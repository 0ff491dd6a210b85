"""Every input (issue 10 §5): click's usage errors, a closed pipe and an unusable state directory each end
as one ``error:`` line (or, for the pipe, silence) and a documented exit code, never "internal error".

Run as the real entry point in a subprocess: the rendering of click's errors, the exit codes and what
reaches a closed pipe are only visible there.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from glmdeploy.errors import EXIT_OUTPUT_CLOSED, EXIT_USAGE

GLMDEPLOY = [sys.executable, "-m", "glmdeploy"]


def run(*args: str, stdout: int | None = subprocess.PIPE) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*GLMDEPLOY, *args], stdout=stdout, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True, timeout=60
    )


def one_error_line(proc: subprocess.CompletedProcess[str]) -> str:
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert "internal error" not in proc.stderr and "Traceback" not in proc.stderr
    return lines[0]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["destroy", "--no-such-flag"], "No such option: --no-such-flag; see 'glmdeploy destroy --help'"),
        (["up"], "Missing option '--profile'"),
        (["nope"], "No such command 'nope'"),
        (["logs", "--tail", "0"], "'--tail'"),
        (["up", "-p", "h200", "--max-attempts", "11"], "'--max-attempts'"),
        (["offers", "-p", "h200", "--max-price", "cheap"], "'--max-price'"),
        (["profiles", "show"], "Missing argument"),
    ],
)
def test_click_usage_errors_are_one_error_line_and_exit_2(args: list[str], expected: str) -> None:
    proc = run(*args)
    assert proc.returncode == EXIT_USAGE
    line = one_error_line(proc)
    assert expected in line
    assert "Usage:" not in proc.stderr + proc.stdout


def closed_pipe_run(*args: str) -> subprocess.CompletedProcess[str]:
    """Run with stdout a pipe whose reader is already gone: the first write gets EPIPE, deterministically."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        return run(*args, stdout=write_end)
    finally:
        os.close(write_end)


@pytest.mark.parametrize(
    "args",
    [
        ["profiles", "list", "--json"],
        ["profiles", "list"],
        ["profiles", "schema"],
        ["plan", "-p", "h200"],
        ["list"],
        ["list", "--json"],
        ["--help"],
        ["--version"],
    ],
)
def test_a_closed_pipe_ends_the_command_quietly(args: list[str]) -> None:
    proc = closed_pipe_run(*args)
    assert proc.stderr == ""
    assert proc.returncode == EXIT_OUTPUT_CLOSED


def _file_in_the_way(tmp: Path) -> Path:
    (tmp / "file").write_text("")
    return tmp / "file"


def _under_a_file(tmp: Path) -> Path:
    (tmp / "file").write_text("")
    return tmp / "file" / "home"


def _broken_link(tmp: Path) -> Path:
    (tmp / "link").symlink_to(tmp / "gone" / "home")
    return tmp / "link"


def _database_is_a_directory(tmp: Path) -> Path:
    (tmp / "home" / "state.db").mkdir(parents=True)
    return tmp / "home"


def _database_is_a_broken_link(tmp: Path) -> Path:
    (tmp / "home").mkdir()
    (tmp / "home" / "state.db").symlink_to(tmp / "gone" / "state.db")
    return tmp / "home"


@pytest.mark.parametrize(
    ("make_home", "args"),
    [
        (_file_in_the_way, ["list"]),
        (_under_a_file, ["list"]),
        (_broken_link, ["list"]),
        (_database_is_a_directory, ["list"]),
        (_database_is_a_broken_link, ["list"]),
        (_database_is_a_broken_link, ["status", "x"]),
        (_file_in_the_way, ["up", "-p", "h200", "--sandbox"]),  # refused before the sandbox or Vast is asked
    ],
)
def test_an_unusable_state_directory_is_one_line_and_exit_2(
    make_home: object, args: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = make_home(tmp_path)  # type: ignore[operator]
    monkeypatch.setenv("GLMDEPLOY_HOME", str(home))
    proc = run(*args)
    assert proc.returncode == EXIT_USAGE, proc.stderr
    line = one_error_line(proc)
    assert "GLMDEPLOY_HOME" in line and str(tmp_path) in line
