"""Every input (issue 10 §5): click's usage errors, a closed pipe and an unusable state directory each end
as one ``error:`` line (or, for the pipe, silence) and a documented exit code, never "internal error".

Run as the real entry point in a subprocess: the rendering of click's errors, the exit codes and what
reaches a closed pipe are only visible there.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
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
    # Nothing about the pipe (before the fix: "internal error: BrokenPipeError"); a command's own
    # notes on stderr (list: "Vast.ai not checked ...: no API key") are not about the pipe.
    assert "error" not in proc.stderr.lower() and "Traceback" not in proc.stderr, proc.stderr
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
    assert line.startswith("error: cannot use ") and "for glmdeploy's state" in line, line


# ----------------------------------------------------------------------------------- numbers and ports
# In-process (CliRunner goes through the same root group), so the matrix stays fast; each case is refused
# while parsing, before a sandbox is started or Vast.ai is asked.

BAD_NUMBERS = [
    *[(["up", "-p", "h200", "--sandbox", "--yes", "--max-price", v], "--max-price") for v in ("0", "-1", "nan", "inf")],
    *[(["ci", "-p", "h200", "--sandbox", "--max-price", v], "--max-price") for v in ("0", "-1", "nan", "inf")],
    (["offers", "-p", "h200", "--sandbox", "--max-price", "nan"], "--max-price"),
    (["up", "-p", "h200", "--sandbox", "--yes", "--max-price", "1000"], "--max-price"),  # absurd: refused
    (["offers", "-p", "h200", "--sandbox", "--max-price", "1e308"], "--max-price"),
    *[(["ci", "-p", "h200", "--sandbox", "--max-cost", v], "--max-cost") for v in ("0", "-1", "nan", "inf")],
    *[(["smoke", "--url", "http://127.0.0.1:9/v1", "--timeout", v], "--timeout") for v in ("0", "-1", "nan", "inf")],
    *[(["bench", "--url", "http://127.0.0.1:9/v1", "--model", "m", "--timeout", v], "--timeout")
      for v in ("0", "nan", "inf")],
    (["up", "-p", "h200", "--sandbox", "--yes", "--timeout", "99999999999999999999d"], "--timeout"),
    (["up", "-p", "h200", "--sandbox", "--yes", "--ttl", "99999999999999999999d"], "--ttl"),
    (["sandbox", "start", "--time-scale", "inf"], "--time-scale"),
    (["sandbox", "start", "--time-scale", "0"], "--time-scale"),
    (["sandbox", "start", "--ttft-ms", "inf"], "--ttft-ms"),
    (["sandbox", "start", "--tpot-ms", "-1"], "--tpot-ms"),
    (["sandbox", "start", "--port", "65536"], "--port"),
    *[(["smoke", "--url", f"http://127.0.0.1:{port}/v1"], "--url") for port in ("0", "65536", "99999")],
    *[(["bench", "--url", f"http://127.0.0.1:{port}/v1", "--model", "m"], "--url") for port in ("0", "99999")],
    *[(["offers", "-p", "h200", "--api-url", f"http://127.0.0.1:{port}", "--api-key", "k"], "--api-url")
      for port in ("0", "70000")],
    # Built in memory before the first send: these would end as a MemoryError.
    (["bench", "--url", "http://127.0.0.1:9/v1", "--model", "m", "--num-prompts", "1000000000"], "--num-prompts"),
    (["bench", "--url", "http://127.0.0.1:9/v1", "--model", "m", "--input-len", "1000000000"], "--input-len"),
    (["bench", "--url", "http://127.0.0.1:9/v1", "--model", "m", "--output-len", "1000000000"], "--output-len"),
    (["ci", "-p", "h200", "--sandbox", "--bench-prompts", "1000000000"], "--bench-prompts"),
]


@pytest.fixture
def no_sandbox_left() -> Iterator[None]:
    """Should a case get past the check and start a sandbox, stop it: a regression must not leak processes."""
    yield
    from glmdeploy.sandbox import process

    process.stop()


@pytest.mark.usefixtures("no_sandbox_left")
@pytest.mark.parametrize(("args", "option"), BAD_NUMBERS, ids=[" ".join(a) for a, _ in BAD_NUMBERS])
def test_a_bad_number_or_port_is_one_error_line_and_exit_2(args: list[str], option: str) -> None:
    from typer.testing import CliRunner

    from glmdeploy.cli import app

    result = CliRunner().invoke(app, args)
    assert result.exit_code == EXIT_USAGE, result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert option in lines[0]
    assert "internal error" not in result.output
    assert result.stdout == ""


@pytest.mark.parametrize("price", [".inf", ".nan", "1000", "0"])
def test_a_profile_with_an_absurd_price_cap_is_refused(price: str, tmp_path: Path) -> None:
    """The profile's cap is also the ranking's price scale: inf, nan or $1000/h would break both."""
    import yaml

    from glmdeploy.profiles import load_profile

    data = load_profile("h200").model_dump(mode="json", exclude={"source"})
    data["name"] = "absurd"
    path = tmp_path / "absurd.yaml"
    text = yaml.safe_dump(data).replace(f"max_price: {data['hardware']['max_price']}", f"max_price: {price}")
    assert f"max_price: {price}" in text
    path.write_text(text)
    proc = run("profiles", "validate", str(path))
    assert proc.returncode == EXIT_USAGE, proc.stdout + proc.stderr
    assert "max_price" in proc.stdout + proc.stderr
    assert "internal error" not in proc.stderr
