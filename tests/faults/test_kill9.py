"""Issue 6 part 3: kill -9 ``glmdeploy up`` (and ``destroy``) anywhere; nothing may keep billing.

One sandbox serves every kill point (a thread of this process, registered for ``--sandbox``; the
CLI under test is a real subprocess, because kill -9 needs one). Each point sets its faults (to
stretch a phase), starts ``up --json``, waits for a phase event, sleeps a seeded delay and sends
SIGKILL. Then, as a user would: ``glmdeploy list --sandbox`` and ``glmdeploy destroy --orphans --yes
--sandbox``. After that the ledger must show nothing running (a deployment that had reached ``ready`` before the kill
is legitimately alive: it is checked, then destroyed by name), every state row must parse and the
DB must agree with the ledger.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from waits import HANG_S, LONG_TIMEOUT, EventStream, requests_matching, wait_for_request, wait_until, wait_until_quiet

from .conftest import GLMDEPLOY, LONG_TTL, Admin, InProcess, Outcome, assert_consistent, state_rows

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

SEED = 20261123
PHASES = ("plan_check", "search", "rank", "confirm", "create", "wait_running", "wait_ready", "resolve_endpoint",
          "smoke", "done")


@dataclass(frozen=True)
class KillPoint:
    """Kill ``up`` ``delay`` seconds after it reports ``phase`` (``faults`` stretch the phase)."""

    phase: str
    delay: float
    faults: str = ""
    args: tuple[str, ...] = ()

    @property
    def id(self) -> str:
        return f"{self.phase}+{self.delay:.2f}s" + (f"[{self.faults}]" if self.faults else "")


def kill_points(seed: int = SEED) -> list[KillPoint]:
    rng = random.Random(seed)
    T = ("--timeout", "10m")
    fixed = [
        KillPoint("plan_check", 0.0),
        KillPoint("search", 0.0),
        KillPoint("search", 0.3, "http429:search=1,retry_after=1"),  # asleep in the rate-limit wait
        KillPoint("rank", 0.0),
        KillPoint("confirm", 0.0),  # re-checking the offer: the row does not exist yet
        KillPoint("create", 0.0),  # the row exists, the create call is on its way
        KillPoint("create", 0.3, "http429:create=1,retry_after=1"),  # waiting to resend: nothing rented
        KillPoint("create", 0.25, "create_timeout=1,delay=0.6"),  # the server rented it; the answer never came
        KillPoint("create", 0.7, "create_timeout=1,delay=0.6"),  # ... killed while looking the label up
        KillPoint("wait_running", 0.0, "stuck_loading", T),
        KillPoint("wait_running", round(rng.uniform(0.05, 0.4), 2), "stuck_loading", T),
        KillPoint("wait_running", round(rng.uniform(0.0, 0.1), 2)),
        KillPoint("wait_ready", 0.0, "never_ready", T),
        KillPoint("wait_ready", round(rng.uniform(0.1, 0.5), 2), "never_ready", T),
        KillPoint("wait_ready", round(rng.uniform(0.0, 0.2), 2)),
        KillPoint("wait_ready", 0.3, "engine_oom;http5xx:destroy=2"),  # killed inside the cleanup's destroy
        KillPoint("wait_running", 0.35, "stuck_loading;http5xx:show=3", ("--timeout", "5m")),  # in cleanup
        KillPoint("resolve_endpoint", 0.0),
        KillPoint("smoke", round(rng.uniform(0.1, 0.8), 2), "slow_first_token=2"),
        KillPoint("done", 0.0),  # ready, then killed before exiting: a live deployment, not an orphan
    ]
    stretch = ["", "never_ready", "stuck_loading", "slow_first_token=1", "empty_logs=4"]
    seeded = []
    for _ in range(6):
        faults = rng.choice(stretch)
        phase = rng.choice(PHASES[:-1])
        seeded.append(KillPoint(phase, round(rng.uniform(0.0, 0.3), 2), faults, T if faults else ()))
    return fixed + seeded


# Reads ``up --json`` lines on a thread, so waiting for an event is bounded in time.
EventReader = EventStream


@pytest.fixture
def world(in_process: Any, cli_env: dict[str, str], isolated_env: Path) -> Iterator[InProcess]:
    w: InProcess = in_process()
    yield w


def _spawn(env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([*GLMDEPLOY, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, text=True)


def _kill9(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    for stream in (proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()


def _settle(admin: Admin) -> None:
    """A request the killed process had already sent may still be served: let it land before checking."""
    wait_until_quiet(admin.request_log)


def _recover_and_check(w: InProcess, *, may_be_ready: bool) -> dict[str, int]:
    """What the user runs after a crash, then the invariants; returns figures for the summary."""
    w.admin.set_faults("")
    _settle(w.admin)
    # The account the killed `up --sandbox` rented on is the sandbox, so that is the one to sweep; a
    # kill before the record was written leaves nothing here to say so (and without --sandbox an empty
    # state dir means "check Vast.ai", which needs a key: issue 10).
    listed = w.glm("list", "--json", "--sandbox")
    assert listed.exit_code == 0, listed.describe()
    orphans = w.glm("destroy", "--orphans", "--yes", "--sandbox")
    assert orphans.exit_code == 0 and not orphans.error_lines(), orphans.describe()
    view = json.loads(w.glm("list", "--json", "--sandbox").stdout)
    ready = [d for d in view["deployments"] if d["status"] == "ready"]
    assert len(ready) <= (1 if may_be_ready else 0), view
    ledger = w.admin.ledger()
    assert_consistent(view, ledger, kept=len(ready))
    rows = state_rows(w.home)  # parses every row through the model; integrity_check too
    assert all(r["status"] in ("ready", "failed", "destroyed") for r in rows), rows
    for d in ready:
        gone = w.glm("destroy", d["name"], "--yes")
        assert gone.exit_code == 0, gone.describe()
    ledger = w.admin.ledger()
    leaked = [i for i in ledger["instances"] if i["status"] != "destroyed"]
    assert leaked == [], ledger
    return {"rented": len(ledger["instances"]), "leaked": len(leaked)}


# The points run in a few chunks, each against its own sandbox, so that xdist can spread them over its
# workers instead of one worker serialising all of them at the end of the run.
CHUNKS = 4


def test_the_kill_points_cover_every_phase() -> None:
    points = kill_points()
    assert len(points) >= 20 and {p.phase for p in points} >= set(PHASES)


@pytest.mark.parametrize("chunk", range(CHUNKS))
def test_kill_9_at_seeded_points_leaves_nothing_billing(
    chunk: int, world: InProcess, cli_env: dict[str, str], fault_figures: dict[str, Any]
) -> None:
    points = kill_points()[chunk::CHUNKS]
    assert points
    rented_before = 0
    for n, point in enumerate(points):
        world.admin.set_faults(point.faults)
        proc = _spawn(cli_env, "up", "-p", "4x3090", "--sandbox", "--yes", "--json", "--name", f"k{chunk}-{n}",
                      "--ttl", LONG_TTL, *point.args)
        reader = EventReader(proc)
        try:
            reached = reader.wait_phase(point.phase)
            assert reached, f"{point.id}: up ended before '{point.phase}': {reader.seen}"
            time.sleep(point.delay)
        finally:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        # Only an up that said "done" before it died may have left a live (ready, not orphaned) deployment.
        said_done = any(e.get("phase") == "done" for e in reader.drain())
        _kill9(proc)
        figures = _recover_and_check(world, may_be_ready=said_done)
        fault_figures["kills"].append({"point": point.id, "rented": figures["rented"] - rented_before,
                                       "leaked": figures["leaked"]})
        rented_before = figures["rented"]


def test_kill_9_of_destroy_leaves_a_retryable_record(world: InProcess, cli_env: dict[str, str],
                                                     fault_figures: dict[str, Any]) -> None:
    for n, refused in enumerate((1, 2)):
        ready = world.glm("up", "-p", "4x3090", "--sandbox", "--yes", "--name", f"d{n}", "--ttl", LONG_TTL)
        assert ready.exit_code == 0, ready.describe()
        world.admin.set_faults("http5xx:destroy=2")  # the first two DELETEs get a 502: destroy retries
        deletes = len(requests_matching(world.admin.requests(), "DELETE"))
        proc = _spawn(cli_env, "destroy", f"d{n}", "--yes")
        # Into the destroy, whatever the interpreter's start-up costs: killed after the first (then the
        # second) refused DELETE, while it waits to retry.
        wait_until(lambda: len(requests_matching(world.admin.requests(), "DELETE")) >= deletes + refused,  # noqa: B023
                   f"{refused} DELETE(s) answered")
        _kill9(proc)
        figures = _recover_and_check(world, may_be_ready=True)
        fault_figures["kills"].append({"point": f"destroy+{refused}x502", "rented": 1, "leaked": figures["leaked"]})


def test_destroy_orphans_spares_an_up_that_is_still_running(world: InProcess, cli_env: dict[str, str]) -> None:
    """An in-flight ``up`` in another process is not an orphan; after kill -9 it is."""
    world.admin.set_faults("never_ready")
    proc = _spawn(cli_env, "up", "-p", "4x3090", "--sandbox", "--yes", "--json", *LONG_TIMEOUT, "--ttl", LONG_TTL)
    try:
        EventReader(proc).expect_phase("wait_ready")
        sweep = world.glm("destroy", "--orphans", "--yes")
        assert sweep.exit_code == 0 and "no orphaned instances" in sweep.stderr, sweep.describe()
        assert len(world.admin.live()) == 1
        assert proc.poll() is None
    finally:
        _kill9(proc)
    _recover_and_check(world, may_be_ready=False)


def test_concurrent_ups_and_destroys_share_one_state_db(world: InProcess, cli_env: dict[str, str]) -> None:
    first = [_spawn(cli_env, "up", "-p", p, "--sandbox", "--yes", "--name", n, "--ttl", LONG_TTL)
             for p, n in (("4x3090", "a"), ("2x5090", "b"))]
    outs = [p.communicate(timeout=120) for p in first]
    assert [p.returncode for p in first] == [0, 0], outs
    # Two destroys and a third up at once, all writing the same state DB.
    second = [_spawn(cli_env, "destroy", "a", "--yes"), _spawn(cli_env, "destroy", "b", "--yes"),
              _spawn(cli_env, "up", "-p", "h200", "--sandbox", "--yes", "--name", "c", "--ttl", LONG_TTL)]
    outs = [p.communicate(timeout=120) for p in second]
    assert [p.returncode for p in second] == [0, 0, 0], outs
    view = json.loads(world.glm("list", "--json").stdout)
    assert sorted((d["name"], d["status"]) for d in view["deployments"]) == [
        ("a", "destroyed"), ("b", "destroyed"), ("c", "ready")]
    assert_consistent(view, world.admin.ledger(), kept=1)
    # Two processes destroying the same deployment: both succeed (idempotent), one instance destroyed once.
    third = [_spawn(cli_env, "destroy", "c", "--yes") for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in third]
    assert [p.returncode for p in third] == [0, 0], outs
    view = json.loads(world.glm("list", "--json").stdout)
    assert_consistent(view, world.admin.ledger(), kept=0)
    assert all(not Outcome(("destroy",), 0, o, e).error_lines() for o, e in outs)


def _ends_destroyed_elsewhere(proc: subprocess.Popen[str], stream: EventStream) -> None:
    """``up`` ends in one line saying another glmdeploy command destroyed it, exit 4, no traceback."""
    proc.wait(timeout=HANG_S)
    assert proc.stderr is not None
    err = proc.stderr.read()
    out = "".join(json.dumps(e) + "\n" for e in stream.drain())
    up = Outcome(("up",), proc.returncode, out, err)
    assert up.exit_code == 4, up.describe()
    assert len(up.error_lines()) == 1 and "another glmdeploy command" in up.error_lines()[0], up.describe()
    assert "Traceback" not in err


@pytest.mark.parametrize("phase", ["create", "wait_ready"])
def test_destroy_from_another_terminal_while_up_runs(world: InProcess, cli_env: dict[str, str], phase: str) -> None:
    """``destroy NAME`` while ``up NAME`` is still working on it: ``up`` stops with one line (exit 4),
    whatever it had rented or was renting is destroyed, and the record stays closed."""
    # create_timeout holds the create's answer back (until released): destroy finds no instance yet and
    # closes the row, then the create's answer is lost; up must find that instance and destroy it itself.
    world.admin.set_faults("create_timeout=1,delay=600" if phase == "create" else "never_ready")
    proc = _spawn(cli_env, "up", "-p", "4x3090", "--sandbox", "--yes", "--json", *LONG_TIMEOUT, "--name", "x",
                  "--ttl", LONG_TTL)
    stream = EventStream(proc)
    try:
        stream.expect_phase(phase)
        if phase == "create":
            wait_for_request(world.admin.request_log, "PUT", "/api/v0/asks/", in_flight=True)
        else:
            wait_for_request(world.admin.request_log, "PUT", "/request_logs/")  # inside the readiness loop
        gone = world.glm("destroy", "x", "--yes")
        assert gone.exit_code == 0, gone.describe()
        world.admin.release()
        _ends_destroyed_elsewhere(proc, stream)
    finally:
        _kill9(proc)
    view = json.loads(world.glm("list", "--json").stdout)
    assert [d["status"] for d in view["deployments"]] == ["destroyed"]
    assert_consistent(view, world.admin.ledger(), kept=0)


def test_up_that_fails_while_another_destroy_is_half_done_says_destroyed_elsewhere(
    world: InProcess, cli_env: dict[str, str]
) -> None:
    """The moment between another terminal's DELETE and its verify: its ``destroy`` has taken the row
    ("destroying") and the instance is gone, so ``up`` sees its engine refuse or a logs request 404
    before the row is closed. That is still "destroyed by another glmdeploy command" (exit 4), never
    "engine failed" or a Vast.ai 404 (exit 7). Seen on CI as a race; held open here on purpose: the test
    plays the other ``destroy``'s first two steps and finishes it only after ``up`` has exited."""
    import httpx

    from glmdeploy.state import StateStore

    world.admin.set_faults("never_ready")
    proc = _spawn(cli_env, "up", "-p", "4x3090", "--sandbox", "--yes", "--json", *LONG_TIMEOUT, "--name", "x",
                  "--ttl", LONG_TTL)
    stream = EventStream(proc)
    try:
        stream.expect_phase("wait_ready")
        wait_for_request(world.admin.request_log, "PUT", "/request_logs/")  # inside the readiness loop
        with StateStore.open() as store:
            row = store.get("x")
            assert row.instance_id is not None
            store.update(row.id, status="destroying", owner_pid=os.getpid())  # what `destroy` does first
        gone = httpx.delete(f"{world.sb.url}/api/v0/instances/{row.instance_id}/",
                            headers={"Authorization": f"Bearer {world.sb.api_key}"}, timeout=10)
        assert gone.status_code == 200, gone.text
        _ends_destroyed_elsewhere(proc, stream)
    finally:
        _kill9(proc)
    finish = world.glm("destroy", "x", "--yes")  # the other terminal's destroy, resumed: verified gone
    assert finish.exit_code == 0, finish.describe()
    view = json.loads(world.glm("list", "--json").stdout)
    assert [d["status"] for d in view["deployments"]] == ["destroyed"]
    assert_consistent(view, world.admin.ledger(), kept=0)
