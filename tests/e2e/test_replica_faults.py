"""Issue 12's fault-matrix rows for replica groups, with the real smg: each one leaks nothing.

- a replica failing readiness (replica 0, or replica 1 after replica 0 was registered): every replica
  rented so far is destroyed, the gateway stopped, exit 4;
- a gateway crash (its SMG killed): the port closes, ``status`` says the gateway is down, ``scale``
  starts it again and registers the live replicas, ``destroy`` leaves nothing;
- kill -9 of ``scale`` while it rents a replacement: ``destroy NAME`` and ``destroy --orphans`` leave
  0 running and the gateway's port closed.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest

from waits import EventStream, wait_until

from .conftest import GLMDEPLOY, LONG_TTL, events

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

SMG = Path(sys.executable).with_name("smg")


@pytest.fixture(autouse=True)
def _needs_smg() -> None:
    if not SMG.exists():
        pytest.skip("smg (dev dependency smg==1.13.0) is not installed")


def _port_open(url: str) -> bool:
    parts = urlparse(url)
    try:
        with socket.create_connection((parts.hostname, parts.port), timeout=1.0):
            return True
    except OSError:
        return False


def _guard_alive(pid: int) -> bool:
    try:
        return b"gateway_guard" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def _gateway_pids(home: str) -> list[int]:
    """Every gateway guard this test's GLMDEPLOY_HOME started (its log file names the group)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes()
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if b"glmdeploy.gateway_guard" in cmd and f"GLMDEPLOY_HOME={home}".encode() in environ:
            found.append(int(entry.name))
    return found


@pytest.fixture
def no_gateway_left(cli_env: dict[str, str]) -> Any:
    yield
    left = _gateway_pids(cli_env["GLMDEPLOY_HOME"])
    for pid in left:
        os.killpg(pid, signal.SIGKILL)
    assert left == [], "a gateway process was left running"


def _up(cli: Any, *extra: str) -> dict[str, Any]:
    up = cli("up", "--profile", "4x3090", "--replicas", "2", "--sandbox", "--yes", "--json", "--ttl", LONG_TTL,
             *extra, timeout=300)
    assert up.returncode == 0, up.stderr
    group: dict[str, Any] = events(up.stdout)[-1]["deployment"]
    return group


def test_a_replica_failing_readiness_tears_the_group_down(cli: Any, sandbox: Any, no_gateway_left: None) -> None:
    box = sandbox(faults="exited=1")
    up = cli("up", "--profile", "4x3090", "--replicas", "2", "--sandbox", "--yes", "--json", "--ttl", LONG_TTL,
             timeout=300)
    assert up.returncode == 4, up.stderr
    evs = events(up.stdout)
    assert evs[-1]["event"] == "failed"
    assert any("gateway stopped" in str(e.get("message")) for e in evs), evs
    assert box.running() == []
    rows = json.loads(cli("list", "--all", "--json", check_exit=0).stdout)["deployments"]
    assert rows and all(r["destroyed_at"] for r in rows)


def test_replica_1_failing_readiness_deregisters_and_destroys_the_registered_replica_0(
        cli: Any, sandbox: Any, no_gateway_left: None) -> None:
    box = sandbox(faults="exited=1,skip=1")  # replica 0 comes up; replica 1's container never starts
    up = cli("up", "--profile", "4x3090", "--replicas", "2", "--sandbox", "--yes", "--json", "--ttl", LONG_TTL,
             timeout=300)
    assert up.returncode == 4, up.stderr
    errors = [line for line in up.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in up.stderr, up.stderr
    evs = events(up.stdout)
    notes = [str(e.get("message")) for e in evs if e["event"] == "note"]
    assert "replica 0: checks passed; registered with the gateway" in notes  # it did take traffic
    assert evs[-1]["event"] == "failed"
    assert any("gateway stopped" in n for n in notes), notes
    instances = box.ledger()["instances"]
    assert len(instances) == 2 and all(i["destroyed_by"] == "api" for i in instances), instances
    assert box.running() == []
    rows = json.loads(cli("list", "--all", "--json", check_exit=0).stdout)["deployments"]
    assert rows and all(r["destroyed_at"] for r in rows)


def test_gateway_crash_is_seen_and_scale_restarts_it(cli: Any, sandbox: Any, no_gateway_left: None) -> None:
    box = sandbox()
    group = _up(cli)
    name = group["name"]
    status = json.loads(cli("status", name, "--json", check_exit=0).stdout)
    gateway = status["gateway"]
    # Kill SMG itself (the guard's child): the guard must close the port, not serve a dead router.
    smg_pids = [int(p) for p in Path(f"/proc/{gateway['pid']}/task/{gateway['pid']}/children").read_text().split()]
    assert smg_pids
    for pid in smg_pids:
        os.kill(pid, signal.SIGKILL)
    wait_until(lambda: not _port_open(gateway["url"]) or None, "the gateway port closes after SMG dies")
    down = json.loads(cli("status", name, "--json", check_exit=0).stdout)
    assert down["gateway"]["alive"] is False
    scaled = cli("scale", name, "--replicas", "2", "--ttl", LONG_TTL, "--json", timeout=300)
    assert scaled.returncode == 0, scaled.stderr
    back = json.loads(cli("status", name, "--json", check_exit=0).stdout)
    assert back["gateway"]["alive"] and back["gateway"]["url"] == gateway["url"]
    assert [r["healthy"] for r in back["replicas"]] == [True, True]
    assert len(box.running()) == 2  # the replicas lived on: nothing was rented again
    cli("destroy", name, "--yes", check_exit=0, timeout=120)
    assert box.running() == [] and not _port_open(gateway["url"])


def test_kill9_during_scale_leaks_nothing(cli: Any, cli_env: dict[str, str], sandbox: Any,
                                          no_gateway_left: None) -> None:
    box = sandbox()
    group = _up(cli)
    name = group["name"]
    gateway = json.loads(cli("status", name, "--json", check_exit=0).stdout)["gateway"]
    proc = subprocess.Popen([*GLMDEPLOY, "scale", name, "--replicas", "3", "--ttl", LONG_TTL, "--json"],
                            env=cli_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            stdin=subprocess.DEVNULL)
    stream = EventStream(proc)
    try:
        assert stream.wait_phase("wait_running"), stream.seen  # the replacement is rented now
    finally:
        proc.kill()
        proc.wait()
    assert len(box.running()) == 3
    # Both hosts with a 4x3090 machine run a replica already: the third goes on a used host, said once.
    warnings = [e["message"] for e in stream.seen if e.get("event") == "note"
                and str(e.get("message")).startswith("warning:")]
    assert len(warnings) == 1 and "already runs a replica" in warnings[0], stream.seen
    assert len({i["host_id"] for i in box.running()}) == 2
    cli("destroy", name, "--yes", timeout=120)
    cli("destroy", "--orphans", "--yes", timeout=120)
    assert box.running() == []
    assert not _port_open(gateway["url"]) and not _guard_alive(gateway["pid"])


def _second_wait_running(stream: EventStream) -> bool:
    """Replica 1's ``wait_running`` phase event: its instance is rented, replica 0 is registered.

    Only ``event == "phase"`` counts: the ``progress`` events that ``wait_running`` emits carry the same
    ``phase`` key, and counting them fired while replica 0 was still loading.
    """
    def is_wait_running(e: dict[str, Any]) -> bool:
        return e.get("event") == "phase" and e.get("phase") == "wait_running"

    def second(e: dict[str, Any]) -> bool:
        return is_wait_running(e) and sum(is_wait_running(x) for x in stream.seen) >= 2

    return stream.wait_for(second, "replica 1's wait_running")


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGHUP])
def test_a_signal_while_renting_replica_1_destroys_every_replica_and_the_gateway(
        cli_env: dict[str, str], sandbox: Any, no_gateway_left: None, signum: int) -> None:
    box = sandbox()
    proc = subprocess.Popen([*GLMDEPLOY, "up", "--profile", "4x3090", "--replicas", "2", "--sandbox", "--yes",
                             "--json", "--ttl", LONG_TTL], env=cli_env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
    stream = EventStream(proc)
    try:
        assert _second_wait_running(stream), stream.seen
        assert len(box.running()) == 2  # replica 0 ready and registered, replica 1 rented
        proc.send_signal(signum)
        code = proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert code == (129 if signum == signal.SIGHUP else 130)
    assert box.running() == []
    assert any("gateway stopped" in str(e.get("message")) for e in stream.drain()), stream.seen
