"""Issue 10 §7 and the "Why" list: destroy is safe to repeat, a 404 on DELETE means gone, a sweep
that could not look does not pass, `logs -f` ends cleanly, and a broke account is not an outage."""

from __future__ import annotations

import json
import os
import select
import subprocess
import time
from collections.abc import Callable

import httpx
import pytest

from .conftest import GLMDEPLOY, LONG_TTL, Sandbox

Cli = Callable[..., subprocess.CompletedProcess[str]]
StartSandbox = Callable[..., Sandbox]

pytestmark = pytest.mark.e2e


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def test_destroy_with_nothing_to_destroy_exits_0(cli: Cli) -> None:
    for args in (["destroy", "--yes"], ["destroy", "--all", "--yes"]):
        proc = cli(*args, check_exit=0)
        assert "nothing to destroy" in proc.stderr and not error_lines(proc.stderr), proc.stderr


def test_destroy_orphans_without_a_key_fails_instead_of_finding_nothing(cli: Cli) -> None:
    proc = cli("destroy", "--orphans", "--yes", check_exit=2)
    assert len(error_lines(proc.stderr)) == 1 and "API key" in proc.stderr, proc.stderr
    assert "no orphaned instances" not in proc.stderr
    # list still shows the local view, and says what it could not check.
    listed = cli("list", check_exit=0)
    assert "no API key" in listed.stderr


def test_a_sandbox_only_state_dir_sweeps_without_a_key(cli: Cli, sandbox: StartSandbox) -> None:
    """Every record names a sandbox, here one that has stopped (its instances ended with it): the
    sweep has checked all this state dir used, so it passes, and says Vast.ai was not looked at."""
    sandbox()
    cli("up", "--profile", "4x3090", "--sandbox", "--ttl", LONG_TTL, "--yes", "--name", "sb", check_exit=0)
    cli("sandbox", "stop", check_exit=0)
    proc = cli("destroy", "--orphans", "--yes", check_exit=0)
    assert not error_lines(proc.stderr), proc.stderr
    assert "Vast.ai itself not checked: no API key" in proc.stderr, proc.stderr
    assert "no orphaned instances" in proc.stderr


def test_a_sweep_without_a_key_fails_when_a_record_names_vast(cli: Cli, sandbox: StartSandbox) -> None:
    """One deployment here ran on Vast.ai (long destroyed): its account may hold an orphan with this
    owner's label, so a sweep that can only reach the sandbox must not pass for a full one."""
    from glmdeploy.state import StateStore
    from glmdeploy.vast.client import DEFAULT_BASE_URL

    with StateStore.open() as store:
        old = store.create(profile="4x3090", profile_snapshot={}, name="on-vast", api_url=DEFAULT_BASE_URL)
        store.mark_destroyed(old.id)
    sandbox()
    cli("up", "--profile", "4x3090", "--sandbox", "--ttl", LONG_TTL, "--yes", "--name", "sb", check_exit=0)
    proc = cli("destroy", "--orphans", "--yes", check_exit=2)
    [line] = error_lines(proc.stderr)
    assert "could not look for orphans" in line and "API key" in line, proc.stderr
    assert "no orphaned instances" not in proc.stderr
    cli("destroy", "sb", "--yes", check_exit=0)


def test_a_destroy_answered_404_not_found_marks_the_deployment_gone(cli: Cli, sandbox: StartSandbox) -> None:
    sb = sandbox()
    cli("up", "--profile", "4x3090", "--sandbox", "--ttl", LONG_TTL, "--yes", "--name", "gone", check_exit=0)
    [instance] = sb.running()
    headers = {"Authorization": f"Bearer {sb.api_key}"}
    url = f"{sb.url}/api/v0/instances/{instance['id']}/"
    # Destroyed behind glmdeploy's back (the console, a teammate); the sandbox then answers a
    # repeated DELETE with its two documented codes in turn: no_such_instance, then not_found.
    assert httpx.request("DELETE", url, json={}, headers=headers, timeout=10).status_code == 200
    first = httpx.request("DELETE", url, json={}, headers=headers, timeout=10)
    assert first.status_code == 404 and first.json()["error"] == "no_such_instance"
    proc = cli("destroy", "gone", "--yes", "--json", check_exit=0)  # this DELETE gets `not_found`
    assert json.loads(proc.stdout)["destroyed"] == [
        {"name": "gone", "instance_id": instance["id"], "result": "already gone"}
    ]
    assert not error_lines(proc.stderr)
    listed = json.loads(cli("list", "--json", check_exit=0).stdout)
    assert [d["status"] for d in listed["deployments"]] == ["destroyed"] and listed["orphans"] == []
    # And run again: still success.
    again = cli("destroy", "--yes", check_exit=0)
    assert "nothing to destroy" in again.stderr


def test_logs_follow_ends_with_exit_0_and_one_line_when_the_instance_goes(
    cli: Cli, cli_env: dict[str, str], sandbox: StartSandbox
) -> None:
    sb = sandbox()
    cli("up", "--profile", "4x3090", "--sandbox", "--ttl", LONG_TTL, "--yes", "--name", "followed", check_exit=0)
    proc = subprocess.Popen([*GLMDEPLOY, "logs", "followed", "-f"], env=cli_env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
    assert proc.stdout is not None
    seen = ""
    deadline = time.monotonic() + 60
    while "\n" not in seen and time.monotonic() < deadline:  # the first log line has arrived
        ready, _, _ = select.select([proc.stdout], [], [], 1.0)
        if ready:
            chunk = os.read(proc.stdout.fileno(), 65536).decode()
            assert chunk, "logs -f ended before any line"
            seen += chunk
    cli("destroy", "followed", "--yes", check_exit=0)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert len(err.strip().splitlines()) == 1 and "gone" in err and "error" not in err, err
    assert sb.running() == []


def test_logs_of_an_instance_destroyed_behind_our_back_is_one_line_not_a_raw_404(
    cli: Cli, sandbox: StartSandbox
) -> None:
    sb = sandbox()
    cli("up", "--profile", "4x3090", "--sandbox", "--ttl", LONG_TTL, "--yes", check_exit=0)
    [instance] = sb.running()
    headers = {"Authorization": f"Bearer {sb.api_key}"}
    url = f"{sb.url}/api/v0/instances/{instance['id']}/"
    assert httpx.request("DELETE", url, json={}, headers=headers, timeout=10).status_code == 200
    proc = cli("logs", check_exit=2)
    [line] = error_lines(proc.stderr)
    assert "no longer exists" in line and "404" not in line


def test_an_account_without_credit_exits_8_not_7(cli: Cli, sandbox: StartSandbox) -> None:
    sb = sandbox(faults="create_fail")
    proc = cli("up", "--profile", "4x3090", "--sandbox", "--yes", check_exit=8)
    [line] = error_lines(proc.stderr)
    assert "cannot pay" in line and "unreachable" not in line
    assert "billing" in proc.stderr and "may still be billing" not in proc.stderr
    assert sb.ledger()["instances"] == []
