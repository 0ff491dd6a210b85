"""Issue 10 item 2: `up` arms the host's TTL watchdog by default, and the sandbox runs it.

The sandbox's clock runs fast (0.001 real seconds per simulated second here), so the default TTL
(the readiness timeout + 30 minutes, 70 simulated minutes for the 4x3090 profile) passes in a few
real seconds. Waits are on events: the ledger showing the instance destroyed, or the wall clock
passing a deadline read from the deployment's own record.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest

from .conftest import GLMDEPLOY, Sandbox, events

Cli = Callable[..., subprocess.CompletedProcess[str]]
StartSandbox = Callable[..., Sandbox]

pytestmark = pytest.mark.e2e
SCALE = 0.001


Rows = list[dict[str, Any]]


def _wait_ledger(sb: Sandbox, check: Callable[[Rows], bool], timeout: float = 60) -> Rows:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        instances: Rows = sb.ledger()["instances"]
        if check(instances):
            return instances
        time.sleep(0.05)
    raise AssertionError(f"the ledger never got there: {sb.ledger()}")


def test_default_ttl_is_enforced_by_the_sandbox_and_status_says_so(cli: Cli, sandbox: StartSandbox) -> None:
    sb = sandbox(time_scale=SCALE)
    up = cli("up", "-p", "4x3090", "--sandbox", "--yes", "--no-smoke", "--json", check_exit=0)
    deployment = events(up.stdout)[-1]["deployment"]
    assert deployment["expires_at"] is not None
    # The watchdog runs the default: the profile's readiness timeout + 30 minutes, on the sandbox's clock.
    from glmdeploy.profiles import load_profile

    [armed] = _wait_ledger(sb, lambda rows: bool(rows) and rows[0]["ttl_s"] is not None)
    assert armed["ttl_s"] == load_profile("4x3090").readiness.timeout_s + 30 * 60
    [gone] = _wait_ledger(sb, lambda rows: rows[0]["status"] == "destroyed")
    assert gone["destroyed_by"] == "watchdog"
    status = cli("status", deployment["name"], check_exit=0)
    assert f"{deployment['name']}: destroyed" in status.stdout
    assert "expired:" in status.stdout and "the TTL watchdog destroyed it" in status.stdout
    view = json.loads(cli("status", deployment["name"], "--json", check_exit=0).stdout)
    assert view["status"] == "destroyed" and "TTL expired" in view["error"]


def test_up_shows_when_the_ttl_expires(cli: Cli, sandbox: StartSandbox) -> None:
    sandbox(time_scale=SCALE)
    up = cli("up", "-p", "4x3090", "--sandbox", "--yes", "--no-smoke", "--ttl", "1000h", check_exit=0)
    assert "expires:" in up.stdout and "the host watchdog destroys it" in up.stdout
    listed = cli("list", check_exit=0)
    assert "expires" in listed.stdout and " in " in listed.stdout
    status = cli("status", check_exit=0)
    assert "expires:" in status.stdout and "TTL watchdog" in status.stdout
    cli("destroy", "--yes", check_exit=0)


def test_ttl_none_warns_and_arms_no_watchdog(cli: Cli, sandbox: StartSandbox) -> None:
    sb = sandbox(time_scale=SCALE)
    up = cli("up", "-p", "4x3090", "--sandbox", "--yes", "--no-smoke", "--json", "--ttl", "none", check_exit=0)
    assert "warning: --ttl none: no watchdog on the host" in up.stderr
    assert events(up.stdout)[-1]["deployment"]["expires_at"] is None
    [instance] = sb.ledger()["instances"]
    assert instance["ttl_s"] is None and instance["status"] != "destroyed"
    assert "never" in cli("status", check_exit=0).stdout
    cli("destroy", "--yes", check_exit=0)
    assert sb.running() == []


def test_a_ttl_shorter_than_the_readiness_timeout_is_refused_unless_forced(cli: Cli, sandbox: StartSandbox) -> None:
    sb = sandbox(time_scale=SCALE, faults="never_ready")
    refused = cli("up", "-p", "4x3090", "--sandbox", "--yes", "--ttl", "20m", "--timeout", "1h")
    assert refused.returncode == 2, refused.stderr
    errors = [line for line in refused.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "shorter than the readiness timeout" in errors[0]
    assert sb.ledger()["instances"] == []  # refused before anything was rented
    forced = cli("up", "-p", "4x3090", "--sandbox", "--yes", "--ttl", "20m", "--timeout", "1h", "--force")
    assert forced.returncode != 2, forced.stderr
    [instance] = _wait_ledger(sb, lambda rows: bool(rows) and rows[0]["status"] == "destroyed")
    assert instance["ttl_s"] == 20 * 60  # armed as asked, and it (or the failed up) destroyed it


def test_ci_refuses_ttl_none(cli: Cli, sandbox: StartSandbox) -> None:
    sb = sandbox(time_scale=SCALE)
    proc = cli("ci", "-p", "4x3090", "--sandbox", "--ttl", "none")
    assert proc.returncode == 2, proc.stderr
    assert "--ttl none is not allowed" in proc.stderr
    assert sb.ledger()["instances"] == []


def test_status_and_list_flag_an_overdue_instance_that_still_runs(
    cli: Cli, cli_env: dict[str, str], sandbox: StartSandbox
) -> None:
    """Stuck pulling its image, the container never starts, so neither does its watchdog: once the
    TTL is past, `status` and `list` must say that it still bills."""
    sb = sandbox(time_scale=SCALE, faults="stuck_loading")
    proc = subprocess.Popen([*GLMDEPLOY, "up", "-p", "4x3090", "--sandbox", "--yes", "--json", "--timeout", "1h",
                             "--ttl", "1h", "--name", "stuck"], env=cli_env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if json.loads(line).get("phase") == "wait_running":
                break
        os.kill(proc.pid, signal.SIGKILL)  # nothing cleans up now but the watchdog, which never started
    finally:
        proc.kill()
        proc.communicate(timeout=10)
    view = json.loads(cli("status", "stuck", "--json", check_exit=0).stdout)
    expires = datetime.fromisoformat(view["expires_at"])
    # Past the expiry plus the grace (120 simulated seconds), on the wall clock.
    while datetime.now(UTC) < expires.astimezone(UTC) + _seconds(0.5):
        time.sleep(0.05)
    assert len(sb.running()) == 1
    status = cli("status", "stuck", check_exit=0)
    assert "OVERDUE" in status.stdout, status.stdout
    assert json.loads(cli("status", "stuck", "--json", check_exit=0).stdout)["ttl_overdue"] is True
    listed = cli("list", check_exit=0)
    assert "OVERDUE" in listed.stdout and "warning: stuck: its TTL expired" in listed.stderr
    cli("destroy", "stuck", "--yes", check_exit=0)
    assert sb.running() == []


def _seconds(real: float) -> Any:
    from datetime import timedelta

    return timedelta(seconds=real)
