"""Issue 13 §1 acceptance: `up`'s live progress on a terminal, in a CI log and as --json events.

The sandbox's `slow_download` fault makes the engine download the weights at the rented offer's own
advertised speed (docs/sandbox.md), so the download lasts as long as `up`'s estimate says: seconds of
real time at the time scale chosen below, long enough for the live line to be seen moving.
"""

from __future__ import annotations

import itertools
import json
import re
import subprocess
from collections.abc import Callable

import pytest

from waits import HANG_S

from .conftest import LONG_TTL, Sandbox, events
from .pty_screen import run_on_pty

Cli = Callable[..., subprocess.CompletedProcess[str]]
StartSandbox = Callable[..., Sandbox]

pytestmark = pytest.mark.e2e

PROFILE = "2x5090"  # vLLM: silent download between "Starting to load model" and "Time spent downloading"
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
# Real seconds the slowed download should last on the screen.
DOWNLOAD_REAL_S = 6.0


def _slowed_sandbox(cli: Cli, sandbox: StartSandbox) -> Sandbox:
    """A sandbox whose time scale makes the top offer's download last ~DOWNLOAD_REAL_S real seconds."""
    probe = sandbox()
    offers = json.loads(cli("offers", "-p", PROFILE, "--sandbox", "--json", check_exit=0).stdout)
    first = offers[0] if isinstance(offers, list) else offers["offers"][0]
    download_s = 62.4 * 8000 / first["inet_down"]
    cli("sandbox", "stop", check_exit=0)
    del probe
    return sandbox(faults="slow_download", time_scale=DOWNLOAD_REAL_S / download_s)


def _run_on_pty(cli_env: dict[str, str], args: list[str]) -> tuple[int, str]:
    """Run the CLI on a pseudo-terminal (120x40) and return its exit code and everything it drew."""
    env = {**cli_env, "TERM": "xterm-256color", "COLUMNS": "120", "LINES": "40"}
    env.pop("NO_COLOR", None)
    run = run_on_pty(env, args, size=(40, 120), read_s=HANG_S * 2)
    return run.code, run.screen


def _frames(screen: str) -> list[str]:
    return [ANSI.sub("", part) for part in re.split(r"[\r\n]", screen)]


def test_live_line_shows_elapsed_progress_eta_and_dollars_each_updating(
    cli: Cli, cli_env: dict[str, str], sandbox: StartSandbox
) -> None:
    sb = _slowed_sandbox(cli, sandbox)
    code, screen = _run_on_pty(cli_env, ["up", "-p", PROFILE, "--sandbox", "--ttl", LONG_TTL, "--no-smoke"])
    assert code == 0, screen[-3000:]
    live = [f for f in _frames(screen) if "downloading weights" in f and "ETA" in f and "spent" in f]
    assert live, "no live download line on the screen:\n" + "\n".join(_frames(screen)[-40:])
    elapsed = {m.group(1) for f in live if (m := re.search(r"total (\S+)\)", f))}
    etas = {m.group(1) for f in live if (m := re.search(r"ETA (\S+)", f))}
    percents = {m.group(1) for f in live if (m := re.search(r"~(\d+)%", f))}
    spent = {m.group(1) for f in live if (m := re.search(r"\$(\d+\.\d+) spent at \$\d+\.\d+/h", f))}
    assert len(elapsed) >= 3 and len(etas) >= 3 and len(percents) >= 3 and len(spent) >= 2, (
        elapsed, etas, percents, spent)
    assert any("TTL until" in f for f in live)
    assert "ready:" in screen
    cli("destroy", "--yes", check_exit=0)
    assert sb.running() == []


def test_without_a_terminal_one_line_per_phase_and_progress_at_most_once_a_minute(
    cli: Cli, cli_env: dict[str, str], sandbox: StartSandbox
) -> None:
    sb = _slowed_sandbox(cli, sandbox)
    up = cli("up", "-p", PROFILE, "--sandbox", "--ttl", LONG_TTL, "--no-smoke", check_exit=0, timeout=HANG_S * 2)
    name = up.stdout.split("ready: ", 1)[1].split()[0]
    lines = up.stderr.splitlines()
    progress = [line for line in lines if line.startswith("progress: ")]
    assert progress, up.stderr
    assert any("downloading weights" in line and "ETA" in line for line in progress), progress
    totals = []
    for line in progress:
        m = re.search(r"total (?:(\d+)m)?(\d+)s\)", line)
        assert m, line
        totals.append(int(m.group(1) or 0) * 60 + int(m.group(2)))
    assert all(b - a >= 59 for a, b in itertools.pairwise(totals)), totals
    assert "\r" not in up.stderr and "\x1b[" not in up.stderr
    cli("destroy", name, "--yes", check_exit=0)
    assert sb.running() == []


def test_the_snippets_use_the_invocation_that_ran(cli: Cli, cli_env: dict[str, str], sandbox: StartSandbox) -> None:
    """A normal-speed sandbox: what `up` and `env` print must run as printed (issue 13 §3)."""
    sb = sandbox()
    cli_env["UV_RUN_RECURSION_DEPTH"] = "1"  # what `uv run` sets: the snippets must say `uv run glmdeploy`
    up = cli("up", "-p", PROFILE, "--sandbox", "--ttl", LONG_TTL, "--no-smoke", check_exit=0, timeout=HANG_S * 2)
    name = up.stdout.split("ready: ", 1)[1].split()[0]
    assert f'eval "$(uv run glmdeploy env {name})"' in up.stdout
    assert f"until 'uv run glmdeploy destroy {name}'" in up.stdout
    exports = cli("env", name, check_exit=0).stdout
    assert "export OPENAI_MODEL=glm-4.7-flash" in exports
    del cli_env["UV_RUN_RECURSION_DEPTH"]
    plain = cli("up", "-p", PROFILE, "--sandbox", "--ttl", LONG_TTL, "--no-smoke", "--name", "plain", check_exit=0,
                timeout=HANG_S * 2).stdout
    assert 'eval "$(python -m glmdeploy env plain)"' in plain  # how this test runs it: no uv, no PATH entry
    cli("destroy", name, "--yes", check_exit=0)
    cli("destroy", "plain", "--yes", check_exit=0)
    assert sb.running() == []


def test_json_progress_events_carry_the_same_fields(cli: Cli, sandbox: StartSandbox) -> None:
    sb = _slowed_sandbox(cli, sandbox)
    up = cli("up", "-p", PROFILE, "--sandbox", "--ttl", LONG_TTL, "--no-smoke", "--json", check_exit=0,
             timeout=HANG_S * 2)
    progress = [e for e in events(up.stdout) if e["event"] == "progress"]
    assert progress
    for e in progress:
        assert set(e) >= {"phase", "elapsed_s", "phase_elapsed_s", "status_msg", "stage", "percent", "eta_s",
                          "estimated", "spent_usd", "dph_total", "expires_at"}
    downloading = [e for e in progress if e["stage"] == "downloading weights"]
    assert downloading and all(e["estimated"] for e in downloading)
    assert len({e["eta_s"] for e in downloading}) >= 2
    assert progress[-1]["spent_usd"] > progress[0]["spent_usd"] > 0 or progress[-1]["spent_usd"] > 0
    assert all(e["expires_at"] for e in progress if e["phase"] == "wait_ready")
    cli("destroy", "--yes", check_exit=0)
    assert sb.running() == []


def test_ci_json_gets_the_same_progress_events(cli: Cli, sandbox: StartSandbox) -> None:
    sb = _slowed_sandbox(cli, sandbox)
    proc = cli("ci", "-p", PROFILE, "--sandbox", "--ttl", LONG_TTL, "--json", timeout=HANG_S * 2)
    assert proc.returncode == 0, proc.stderr
    progress = [e for e in events(proc.stdout) if e["event"] == "progress"]
    assert any(e["stage"] == "downloading weights" and e["eta_s"] for e in progress), progress[:3]
    assert sb.running() == []
