"""Issue 10 item 2: a hang-up (SIGHUP: the terminal closed, the SSH session dropped) during ``up``.

Alongside the kill -9 suite and with its machinery: one threaded sandbox, ``up --json`` as a real
subprocess, a phase event, a seeded delay, then SIGHUP instead of SIGKILL. Unlike kill -9, a hang-up
can be handled, so nobody runs ``destroy`` afterwards: ``up`` itself must destroy and verify what it
rented and exit 129. The check is the sandbox's ledger (0 instances live), the state DB (no active
row, every row parses) and ``list --json`` (nothing orphaned).

The watchdog is switched off (``--ttl none``): what is measured is the hang-up handling, not the TTL.
"""

from __future__ import annotations

import json
import os
import pty
import random
import signal
import subprocess
import time
from dataclasses import dataclass
from typing import Any

import pytest

from .conftest import GLMDEPLOY, LONG_TTL, InProcess, assert_consistent, state_rows
from .test_kill9 import PHASES, EventReader, _kill9, _settle, _spawn
from .test_kill9 import world as world  # a fixture, shared with the kill -9 suite

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

SEED = 20261203
T = ("--timeout", "10m")


@dataclass(frozen=True)
class HangUpPoint:
    """SIGHUP ``up`` ``delay`` seconds after it reports ``phase`` (``faults`` stretch the phase)."""

    phase: str
    delay: float
    faults: str = ""
    args: tuple[str, ...] = ()
    # Then also wait until the sandbox has received this request ("METHOD /path-prefix").
    after_request: str | None = None

    @property
    def id(self) -> str:
        after = f" after {self.after_request}" if self.after_request else ""
        return f"{self.phase}{after}+{self.delay:.2f}s" + (f"[{self.faults}]" if self.faults else "")


def hangup_points(seed: int = SEED) -> list[HangUpPoint]:
    rng = random.Random(seed)
    fixed = [
        HangUpPoint("search", 0.3, "http429:search=1,retry_after=1"),  # asleep in the rate-limit wait
        HangUpPoint("create", 0.3, "http429:create=1,retry_after=1"),  # the row exists, nothing rented yet
        HangUpPoint("create", 0.25, "create_timeout=1,delay=0.6"),  # rented; the answer never comes
        HangUpPoint("wait_running", round(rng.uniform(0.05, 0.4), 2), "stuck_loading", T),
        HangUpPoint("wait_ready", round(rng.uniform(0.1, 0.5), 2), "never_ready", T),
        # Inside the failure's teardown: its destroy got a 429 and the client waits out Retry-After.
        HangUpPoint("wait_ready", 0.3, "engine_oom;http429:destroy=1,retry_after=1",
                    after_request="DELETE /api/v0/instances/"),
        HangUpPoint("smoke", round(rng.uniform(0.1, 0.6), 2), "slow_first_token=3"),
    ]
    stretch = [("never_ready", "wait_ready"), ("stuck_loading", "wait_running"), ("slow_first_token=3", "smoke")]
    seeded = []
    for _ in range(3):
        faults, phase = rng.choice(stretch)
        seeded.append(HangUpPoint(phase, round(rng.uniform(0.0, 0.4), 2), faults, T))
    return fixed + seeded


def _check_nothing_left(w: InProcess) -> dict[str, int]:
    """No destroy by hand: the ledger, the state DB and `list` must already agree that nothing bills."""
    w.admin.set_faults("")
    _settle(w.admin)
    ledger = w.admin.ledger()
    live = [i for i in ledger["instances"] if i["status"] != "destroyed"]
    assert live == [], ledger
    rows = state_rows(w.home)  # parses every row through the model; integrity_check too
    assert all(r["status"] in ("failed", "destroyed") for r in rows), rows
    listed = w.glm("list", "--json")
    assert listed.exit_code == 0, listed.describe()
    view = json.loads(listed.stdout)
    assert_consistent(view, w.admin.ledger(), kept=0)
    return {"rented": len(ledger["instances"]), "leaked": len(live)}


def test_sighup_at_seeded_points_destroys_and_exits_129(
    world: InProcess,
    cli_env: dict[str, str],
    fault_figures: dict[str, Any],
) -> None:
    points = hangup_points()
    assert len(points) >= 5 and {p.phase for p in points} >= {"search", "create", "wait_running", "wait_ready",
                                                                "smoke"}
    assert {p.phase for p in points} <= set(PHASES)
    rented_before = 0
    for n, point in enumerate(points):
        world.admin.set_faults(point.faults)
        since = len(world.admin.requests())
        proc = _spawn(cli_env, "up", "-p", "4x3090", "--sandbox", "--yes", "--json", "--name", f"h{n}",
                      "--ttl", "none", *point.args)
        reader = EventReader(proc)
        stderr = ""
        try:
            assert reader.wait_phase(point.phase), f"{point.id}: up ended before '{point.phase}': {reader.seen}"
            if point.after_request:
                _wait_request(world, point.after_request, since)
            time.sleep(point.delay)
            proc.send_signal(signal.SIGHUP)
            proc.wait(timeout=90)
            assert proc.stderr is not None
            stderr = proc.stderr.read()  # what `up` said is the first thing to read when the code is wrong
        finally:
            _kill9(proc)  # only if it is still there: the test then fails on its exit code
        seen = reader.drain()
        assert proc.returncode == 129, f"{point.id}: exit {proc.returncode}: stderr {stderr!r}; events {seen}"
        assert seen and seen[-1].get("code") == "hung_up", f"{point.id}: {seen[-1:]}"
        figures = _check_nothing_left(world)
        fault_figures["sighups"].append({"point": point.id, "rented": figures["rented"] - rented_before,
                                         "leaked": figures["leaked"]})
        rented_before = figures["rented"]


def test_sighup_from_a_closed_terminal_still_destroys(world: InProcess, cli_env: dict[str, str]) -> None:
    """The real hang-up: ``up`` writes to a terminal that is gone. Its cleanup must not die on EIO."""
    world.admin.set_faults("never_ready")
    master, slave = pty.openpty()
    # The pty is the controlling terminal of a new session, as a login shell's is: closing its master
    # side makes the kernel hang it up and send SIGHUP, exactly as a dropped SSH connection does.
    args = ["up", "-p", "4x3090", "--sandbox", "--yes", "--ttl", "none", "--timeout", "2h"]
    proc = subprocess.Popen([*GLMDEPLOY, *args], env=cli_env, stdin=slave, stdout=slave, stderr=slave,
                            start_new_session=True, preexec_fn=_take_controlling_terminal)
    os.close(slave)
    try:
        deadline = time.monotonic() + 60
        while not world.admin.live() and time.monotonic() < deadline:
            _drain_pty(master)
            time.sleep(0.05)
        assert world.admin.live(), "up never rented"
        os.close(master)  # the terminal goes away: SIGHUP, and writes to it fail from now on
        master = -1
        assert proc.wait(timeout=90) == 129
    finally:
        if master >= 0:
            os.close(master)
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    _check_nothing_left(world)


def _wait_request(w: InProcess, prefix: str, since: int, timeout: float = 60) -> None:
    """Until the sandbox has received ``prefix`` ("METHOD /path") as its request number ``since`` or later."""
    method, _, path = prefix.partition(" ")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(r["method"] == method and r["path"].startswith(path) for r in w.admin.requests()[since:]):
            return
        time.sleep(0.02)
    raise AssertionError(f"the sandbox never received {prefix}")


def _take_controlling_terminal() -> None:
    import fcntl
    import termios

    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


def _drain_pty(fd: int) -> None:
    """Read what ``up`` wrote so far (a full pty would block it)."""
    import select

    while select.select([fd], [], [], 0)[0]:
        try:
            if not os.read(fd, 65536):
                return
        except OSError:
            return


def test_sighup_of_ci_destroys_and_exits_129(world: InProcess, cli_env: dict[str, str]) -> None:
    """`ci` shares the guard: a hang-up of the runner's session tears its instance down too."""
    world.admin.set_faults("never_ready")
    proc = _spawn(cli_env, "ci", "-p", "4x3090", "--sandbox", "--ttl", LONG_TTL, "--json", "--timeout", "2h")
    reader = EventReader(proc)
    try:
        assert reader.wait_phase("wait_ready")
        proc.send_signal(signal.SIGHUP)
        proc.wait(timeout=90)
        assert proc.stderr is not None
        stderr = proc.stderr.read()
    finally:
        _kill9(proc)
    outcome = reader.drain()[-1]
    assert proc.returncode == 129, outcome
    # docs/troubleshooting.md's row, word for word.
    assert "error: hung up (SIGHUP): whatever was rented has been destroyed" in stderr.splitlines(), stderr
    assert outcome["event"] == "ci" and outcome["code"] == "hung_up" and outcome["passed"] is False
    _check_nothing_left(world)


def test_sighup_during_destroy_finishes_the_teardown_then_exits_129(world: InProcess, cli_env: dict[str, str]) -> None:
    """`destroy` shares the guard: a hang-up while it waits out a 429 does not cut the destroy short."""
    ready = world.glm("up", "-p", "4x3090", "--sandbox", "--yes", "--name", "bye", "--ttl", "none")
    assert ready.exit_code == 0, ready.describe()
    world.admin.set_faults("http429:destroy=1,retry_after=1")
    since = len(world.admin.requests())
    proc = _spawn(cli_env, "destroy", "bye", "--yes")
    try:
        _wait_request(world, "DELETE /api/v0/instances/", since)
        proc.send_signal(signal.SIGHUP)
        proc.wait(timeout=90)
    finally:
        _kill9(proc)
    assert proc.returncode == 129
    _check_nothing_left(world)


def test_sighup_while_up_writes_its_record_leaves_no_phantom_deployment(
    in_process: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The record is written before anything is rented; a hang-up that lands while it is written must
    still close it. Before the fix the signal's exception left ``store.create`` before `up` knew of the
    row: exit 129, and `list` showed a deployment 'creating' forever with nothing behind it."""
    from glmdeploy.state import StateStore

    w: InProcess = in_process()
    real_create = StateStore.create

    def create_then_hang_up(self: StateStore, **fields: Any) -> Any:
        row = real_create(self, **fields)
        signal.raise_signal(signal.SIGHUP)  # delivered now, while the row's writer is still running
        return row

    with monkeypatch.context() as patched:
        patched.setattr(StateStore, "create", create_then_hang_up)
        outcome = w.glm("up", "-p", "4x3090", "--sandbox", "--yes", "--ttl", "none")
    assert outcome.exit_code == 129, outcome.describe()
    rows = state_rows(w.home)
    assert len(rows) == 1 and rows[0]["status"] == "failed", rows
    assert w.admin.ledger()["instances"] == []  # nothing was rented
    listed = json.loads(w.glm("list", "--json").stdout)["deployments"]
    assert [d["status"] for d in listed] == ["failed"], listed  # shown as what it is, nothing active
