"""Issue 4 bad input: each case is one clear line on stderr, the documented exit code, no traceback."""

from __future__ import annotations

import json
import sqlite3
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from .conftest import LONG_TTL, Sandbox

Cli = Callable[..., subprocess.CompletedProcess[str]]
StartSandbox = Callable[..., Sandbox]


def one_error_line(proc: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, proc.stderr
    return lines[0]


def test_no_api_key_exits_2_and_says_how_to_fix_it(cli: Cli) -> None:
    proc = cli("up", "-p", "4x3090", "--yes")
    assert proc.returncode == 2
    line = one_error_line(proc)
    assert "API key" in line and "VAST_API_KEY" in line


def test_refuses_to_rent_without_a_terminal_or_yes(cli: Cli) -> None:
    proc = cli("up", "-p", "4x3090", "--api-key", "k")
    assert proc.returncode == 2
    assert "--yes" in proc.stderr


def test_a_refused_key_exits_6_without_echoing_it(cli: Cli, sandbox: StartSandbox) -> None:
    sb = sandbox()
    secret = "vast-key-that-is-wrong-0123456789"
    proc = cli("up", "-p", "4x3090", "--yes", "--api-url", sb.url, "--api-key", secret)
    assert proc.returncode == 6, proc.stderr
    one_error_line(proc)
    assert secret not in proc.stderr + proc.stdout
    assert sb.ledger()["instances"] == []


def test_no_offer_under_the_cap_exits_3(cli: Cli, sandbox: StartSandbox) -> None:
    sb = sandbox()
    proc = cli("up", "-p", "4x3090", "--yes", "--sandbox", "--max-price", "0.01")
    assert proc.returncode == 3
    assert "$0.01/h" in one_error_line(proc)
    assert sb.ledger()["instances"] == []


@pytest.mark.parametrize(("option", "value"), [("--ttl", "soon"), ("--timeout", "10x"), ("--ttl", "-5m")])
def test_durations_that_do_not_parse_exit_2(cli: Cli, option: str, value: str) -> None:
    proc = cli("up", "-p", "4x3090", "--yes", "--sandbox", option, value)
    assert proc.returncode == 2
    assert option in one_error_line(proc)


def test_unknown_deployment_name_exits_2(cli: Cli) -> None:
    for command in (["status", "nope"], ["env", "nope"], ["logs", "nope"], ["destroy", "nope", "--yes"]):
        proc = cli(*command)
        assert proc.returncode == 2, command
        assert "unknown deployment 'nope'" in one_error_line(proc)


def test_two_deployments_with_the_same_name_are_refused(cli: Cli, sandbox: StartSandbox) -> None:
    sb = sandbox()
    cli("up", "-p", "4x3090", "--yes", "--sandbox", "--ttl", LONG_TTL, "--name", "twin", check_exit=0)
    proc = cli("up", "-p", "2x5090", "--yes", "--sandbox", "--name", "twin")
    assert proc.returncode == 2
    assert "already exists" in one_error_line(proc)
    assert len(sb.running()) == 1
    cli("destroy", "twin", "--yes", check_exit=0)


def test_destroying_something_already_gone_is_success(cli: Cli, sandbox: StartSandbox) -> None:
    sb = sandbox()
    cli("up", "-p", "4x3090", "--yes", "--sandbox", "--ttl", LONG_TTL, "--name", "gone", check_exit=0)
    cli("destroy", "gone", "--yes", check_exit=0)
    again = cli("destroy", "gone", "--yes", "--json")
    assert again.returncode == 0
    assert json.loads(again.stdout)["destroyed"][0]["result"] == "already gone"
    assert sb.running() == []


def test_destroyed_outside_glmdeploy_is_reconciled(cli: Cli, sandbox: StartSandbox) -> None:
    import httpx

    sb = sandbox()
    up = cli("up", "-p", "4x3090", "--yes", "--sandbox", "--ttl", LONG_TTL, "--json", check_exit=0)
    instance_id = json.loads(up.stdout.splitlines()[-1])["deployment"]["instance_id"]
    httpx.request("DELETE", f"{sb.url}/api/v0/instances/{instance_id}/",
                  headers={"Authorization": f"Bearer {sb.api_key}"}, json={}, timeout=10).raise_for_status()
    listed = json.loads(cli("list", "--json", check_exit=0).stdout)
    assert [d["status"] for d in listed["deployments"]] == ["destroyed"]
    assert cli("destroy", "--all", "--yes").returncode == 0


def test_a_state_db_from_a_newer_version_is_refused(cli: Cli, isolated_env: Path) -> None:
    assert cli("list", "--json").returncode == 0  # creates the database
    db = isolated_env / "state.db"
    with sqlite3.connect(db) as conn:
        conn.execute("PRAGMA user_version = 999")
    proc = cli("list")
    assert proc.returncode == 2
    assert "newer glmdeploy" in one_error_line(proc)


def test_up_refuses_what_the_planner_says_does_not_fit_unless_forced(cli: Cli, sandbox: StartSandbox) -> None:
    sb = sandbox()
    # 2x RTX 5090 with BF16 weights: a 200k context cannot fit next to 28 GiB of weights per GPU.
    proc = cli("up", "-p", "2x5090", "--sandbox", "--context-length", "200000")
    assert proc.returncode == 2
    line = one_error_line(proc)
    assert "does not fit" in line and "--force" in proc.stderr
    assert sb.ledger()["instances"] == []
    forced = cli("up", "-p", "2x5090", "--sandbox", "--context-length", "200000", "--force", "--no-smoke")
    assert forced.returncode == 0, forced.stderr
    assert "continuing because of --force" in forced.stderr
    cli("destroy", "--yes", check_exit=0)
    assert sb.running() == []
