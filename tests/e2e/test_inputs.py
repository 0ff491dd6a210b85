"""Issue 10 §5 and §8 through the real CLI against the sandbox: a closed pipe while an instance exists,
and a price cap that filters offers without reordering them."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable

import pytest

from .conftest import GLMDEPLOY, LONG_TTL, Sandbox

Cli = Callable[..., subprocess.CompletedProcess[str]]
StartSandbox = Callable[..., Sandbox]

EXIT_OUTPUT_CLOSED = 141


def closed_stdout(cli_env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """Run with stdout a pipe whose reader is already gone: the first write gets EPIPE, deterministically."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        return subprocess.run([*GLMDEPLOY, *args], env=cli_env, stdout=write_end, stderr=subprocess.PIPE,
                              stdin=subprocess.DEVNULL, text=True, timeout=60)
    finally:
        os.close(write_end)


def test_logs_into_a_closed_pipe_exits_quietly(cli: Cli, cli_env: dict[str, str], sandbox: StartSandbox) -> None:
    sandbox()
    cli("up", "-p", "4x3090", "--sandbox", "--ttl", LONG_TTL, "--no-smoke", "--name", "piped", check_exit=0)
    for args in (["logs", "piped"], ["logs", "piped", "--tail", "5"], ["status", "piped"], ["list"]):
        proc = closed_stdout(cli_env, *args)
        assert (proc.returncode, proc.stderr) == (EXIT_OUTPUT_CLOSED, ""), args
    cli("destroy", "piped", "--yes", check_exit=0)


def test_up_whose_output_is_closed_mid_deploy_destroys_what_it_rented(
    cli_env: dict[str, str], sandbox: StartSandbox
) -> None:
    """`up --json | head -3`: nobody reads the rest. Like a hang-up, that tears the instance down."""
    sb = sandbox(time_scale=0.01)  # loading takes seconds: the close lands long before ready
    proc = subprocess.Popen([*GLMDEPLOY, "up", "-p", "4x3090", "--sandbox", "--ttl", LONG_TTL, "--json", "--no-smoke"],
                            env=cli_env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
    assert proc.stdout is not None
    seen = []
    for line in proc.stdout:
        seen.append(json.loads(line))
        if seen[-1].get("phase") == "wait_running":  # the instance exists
            break
    proc.stdout.close()
    _, stderr = proc.communicate(timeout=120)
    assert seen[-1].get("phase") == "wait_running", seen
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr and "internal error" not in stderr
    assert sb.running() == []


def _offer_ids(cli: Cli, profile: str, cap: str) -> list[int]:
    proc = cli("offers", "-p", profile, "--sandbox", "--max-price", cap, "--limit", "50", "--json", check_exit=0)
    return [offer["id"] for offer in json.loads(proc.stdout)]


@pytest.mark.parametrize("profile", ["h200", "4x3090"])
def test_raising_the_price_cap_never_reorders_the_offers_under_it(
    cli: Cli, sandbox: StartSandbox, profile: str
) -> None:
    sandbox()
    orders = {cap: _offer_ids(cli, profile, cap) for cap in ("5", "10", "40", "120")}
    lowest = orders["5"]
    assert lowest, orders
    for cap, ids in orders.items():
        assert [i for i in ids if i in lowest] == lowest, (cap, orders)


def test_an_absurd_cap_is_refused(cli: Cli) -> None:
    proc = cli("offers", "-p", "h200", "--sandbox", "--max-price", "129")
    assert proc.returncode == 2
    assert "'--max-price': must be at most $128/h" in proc.stderr
