"""Issue 6 part 1: every sandbox fault in every phase of ``up``, ``destroy`` and ``logs``.

For each cell (``matrix.CELLS``) three things are asserted:

(a) the CLI ends with the documented exit code and a one-line reason: exactly one ``error:`` line on
    failure (none on success), no traceback of glmdeploy's own (an engine's traceback may be quoted
    in the ``  | `` log excerpt);
(b) the sandbox's ledger shows exactly the instances the cell expects to bill right after the
    command (none, unless ``--keep-on-failure`` or a ready deployment), nothing rented twice and
    no internal lifecycle error; what the CLI told the user to run next (``destroy --orphans``)
    then leaves nothing billing;
(c) the state DB is intact and agrees with the ledger: ``glmdeploy list --json`` after the fault has
    passed shows no active row whose instance is gone and no live instance without an active row.

Each cell ends by destroying what it deliberately kept and checking the ledger is at zero: the
leak count in the summary is the number of instances still live after that.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from waits import LONG_TIMEOUT, EventStream

from .conftest import (
    GLMDEPLOY,
    LONG_TTL,
    Admin,
    InProcess,
    Outcome,
    SandboxProcess,
    assert_consistent,
    is_active,
    run_cli,
    state_rows,
)
from .matrix import (
    CELLS,
    PROCESS_CELLS,
    README,
    REPLICA_BEGIN,
    REPLICA_CELLS,
    REPLICA_END,
    Cell,
    readme_table,
    render_replica_table,
    render_table,
)

pytestmark = pytest.mark.e2e
# Failures read off the instance (status, status_msg), not off the engine's log.
INSTANCE_REASONS = frozenset({"manifest_unknown", "image_pull", "status_msg_error", "instance_offline",
                              "instance_unknown", "instance_exited"})


def assert_one_line_reason(out: Outcome, code: int) -> None:
    """(a): the documented exit code; one ``error:`` line when failing; never our own traceback."""
    assert out.exit_code == code, out.describe()
    ours = [line for line in out.stderr.splitlines() if not line.startswith("  | ")]
    assert not any("Traceback" in line or "internal error" in line for line in ours), out.describe()
    assert len(out.error_lines()) == (1 if code else 0), out.describe()
    if code:
        assert len(out.error_lines()[0]) > len("error: ") + 10, out.describe()


def _params() -> list[Any]:
    return [pytest.param(c, id=c.id, marks=[pytest.mark.slow] if c.slow else []) for c in CELLS]


@pytest.mark.parametrize("cell", _params())
def test_fault_cell(cell: Cell, in_process: Any, fault_figures: dict[str, Any]) -> None:
    w: InProcess = in_process(faults=cell.fault if cell.command in ("up", "ci") else "")
    name = "cell"
    # The profile's readiness timeout is only 2.4 real seconds at this time scale, and Retry-After waits
    # and a loaded machine's slowness are real seconds: a cell must not turn into "timeout" because the
    # box was busy. Only the cells about the timeout give their own --timeout.
    timeout = () if "--timeout" in cell.args else LONG_TIMEOUT
    if cell.command == "up":
        out = w.glm("up", "-p", cell.profile, "--sandbox", "--yes", "--json", "--name", name, *timeout,
                    "--ttl", LONG_TTL, *cell.args)
        evs = out.events()
        assert evs and evs[-1]["event"] == ("ready" if cell.exit == 0 else "failed"), out.describe()
        if cell.exit in (4, 5):
            assert evs[-1]["phase"] == cell.column, out.describe()
        if cell.reason:
            assert evs[-1]["failure"] == cell.reason, out.describe()
    elif cell.command == "ci":
        out = w.glm("ci", "-p", cell.profile, "--sandbox", "--name", name, *timeout, "--ttl", LONG_TTL, *cell.args)
    else:
        ready = w.glm("up", "-p", cell.profile, "--sandbox", "--yes", "--name", name, *timeout, "--ttl", LONG_TTL)
        assert ready.exit_code == 0, ready.describe()
        w.admin.set_faults(cell.fault)
        if cell.command == "destroy":
            out = w.glm("destroy", name, "--yes", "--json", *cell.args)
        else:
            out = w.glm("logs", name, "--tail", "50", *cell.args)
            _check_logs(cell, out)
    assert_one_line_reason(out, cell.exit)
    fired = _fired(w.admin) if cell.fault else 0
    if cell.reason:
        assert cell.reason in out.error_lines()[0], out.describe()
        if cell.reason not in INSTANCE_REASONS:  # a failure read in the engine's log quotes the log
            assert "log excerpt:" in out.stderr, out.describe()
    if cell.polls is not None:
        polls = polls_to_classification(w.admin)
        assert 1 <= polls <= cell.polls, f"classified after {polls} polls\n{out.describe()}"
        fault_figures.setdefault("polls", {})[cell.id] = polls
    if cell.rentals is not None:
        assert len(w.admin.ledger()["instances"]) == cell.rentals, w.admin.ledger()

    # (b) right after the command: only what the cell expects bills.
    expected_live = cell.live_after + (1 if cell.command == "up" and cell.exit == 0 else 0)
    if cell.command == "ci":
        assert w.admin.ledger()["instances"] or cell.exit == 3, "ci rented nothing"
    ledger = w.admin.ledger()
    assert len([i for i in ledger["instances"] if i["status"] != "destroyed"]) == expected_live, ledger
    # The fault passes; the user runs what they were told to.
    w.admin.set_faults("")
    if cell.recover == "orphans":
        assert "destroy --orphans" in out.stdout + out.stderr, out.describe()
        assert_one_line_reason(w.glm("destroy", "--orphans", "--yes"), 0)
        expected_live -= cell.live_after
    elif cell.recover == "destroy":
        assert f"glmdeploy destroy {name}" in out.stdout + out.stderr, out.describe()
        assert_one_line_reason(w.glm("destroy", name, "--yes"), 0)
        expected_live -= cell.live_after

    # (c) the DB is intact and agrees with the ledger.
    listed = w.glm("list", "--json")
    assert_one_line_reason(listed, 0)
    view = json.loads(listed.stdout)
    ledger = w.admin.ledger()
    assert_consistent(view, ledger, kept=expected_live)
    rows = state_rows(w.home)
    # A taken offer leaves a closed 'failed' row (nothing rented); at most one row may stay open.
    assert len([r for r in rows if is_active(r)]) == expected_live, rows
    assert all(r["name"] == name for r in rows), rows

    # Teardown through the CLI; whatever is still live now is a leak.
    assert_one_line_reason(w.glm("destroy", "--all", "--yes"), 0)
    leaked = [i for i in w.admin.ledger()["instances"] if i["status"] != "destroyed"]
    fault_figures["cells"].append({"cell": cell.id, "faults_fired": fired, "rented": len(ledger["instances"]),
                                   "leaked": len(leaked)})
    assert leaked == []


def polls_to_classification(admin: Admin) -> int:
    """Polls `up` made between the fault's first visible sign and destroying the instance.

    A poll is one turn of the wait loop: one ``GET /instances/{id}/`` while waiting for running, one log
    request (``PUT /instances/request_logs/{id}/``) while waiting for ready, so it is the larger count.
    """
    first = admin.ledger()["instances"][0]
    sign = first["first_sign_at"]
    assert sign is not None, f"the sandbox recorded no first sign: {first}"
    iid = first["id"]
    reqs = admin.requests()
    destroyed = min(r["at"] for r in reqs if r["method"] == "DELETE" and r["path"] == f"/api/v0/instances/{iid}/")
    window = [r for r in reqs if sign <= r["at"] <= destroyed]
    shows = sum(1 for r in window if r["method"] == "GET" and r["path"] == f"/api/v0/instances/{iid}/")
    logs = sum(1 for r in window if r["method"] == "PUT" and r["path"] == f"/api/v0/instances/request_logs/{iid}/")
    return max(shows, logs)


def _check_logs(cell: Cell, out: Outcome) -> None:
    if cell.exit:
        return
    if cell.outcome.startswith("no lines"):
        assert out.stdout.strip() == "", out.describe()
    else:
        assert "ready to roll" in out.stdout or "INFO" in out.stdout, out.describe()


def _fired(admin: Admin) -> int:
    """How many times the sandbox answered with an injected error (429, 5xx, dropped), at least one per cell."""
    errors = [r for r in admin.requests() if r["status"] in (0, 429) or r["status"] >= 500]
    return max(1, len(errors))


# --------------------------------------------------------------------------- the sandbox dies


@pytest.mark.slow
def test_sandbox_killed_during_wait_ready_then_restarted(
    sandbox_process: SandboxProcess, cli_env: dict[str, str], isolated_env: Path, fault_figures: dict[str, Any]
) -> None:
    """The API vanishes under a running ``up``: exit 7 with one line, the record stays findable; after
    the sandbox comes back (same port, empty world) ``list`` marks the instance gone.

    Honest limits: while the API is gone nothing can be destroyed or verified, so the row is left
    ``orphaned`` (not ``failed``), and the user is told so. The sandbox's instances ended with its
    process, which is what a restarted sandbox reports.
    """
    (cell,) = PROCESS_CELLS
    admin = sandbox_process.start(faults=cell.fault)
    # The readiness timeout (4.8 real seconds at this time scale) must not fire before the kill does.
    proc = subprocess.Popen([*GLMDEPLOY, "up", "-p", cell.profile, "--sandbox", "--yes", "--json", "--name", "cell",
                             *LONG_TIMEOUT, "--ttl", LONG_TTL],
                            env=cli_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                            text=True)
    stream = EventStream(proc)
    stream.expect_phase("wait_ready")
    assert len(admin.live()) == 1
    admin.close()
    sandbox_process.kill9()
    proc.wait(timeout=120)
    assert proc.stderr is not None
    err = proc.stderr.read()
    out_rest = "".join(json.dumps(e) + "\n" for e in stream.drain())
    out = Outcome(("up",), proc.returncode or 0, out_rest, err)
    assert_one_line_reason(out, cell.exit)
    assert json.loads(out_rest.splitlines()[-1])["event"] == "failed"
    assert "destroy --orphans" in err, out.describe()
    rows = state_rows(isolated_env)
    assert [(r["name"], r["status"]) for r in rows] == [("cell", "orphaned")]
    # Back on the same port: a new, empty world. The instance ended with the old process, and
    # reconcile (run by list) finds no instance under the label: the record is closed.
    admin = sandbox_process.start(port=sandbox_process.port)
    try:
        listed = run_cli(cli_env, "list", "--json")
        assert_one_line_reason(listed, 0)
        view = json.loads(listed.stdout)
        assert [d["status"] for d in view["deployments"]] == ["destroyed"]
        assert "warning" not in listed.stderr
        assert_consistent(view, admin.ledger(), kept=0)
        cleanup = run_cli(cli_env, "destroy", "--orphans", "--yes")
        assert_one_line_reason(cleanup, 0)
        assert admin.live() == []
    finally:
        admin.close()
    fault_figures["cells"].append({"cell": "wait_ready-sandbox_killed_and_restarted", "faults_fired": 1,
                                   "rented": 1, "leaked": 0})


# --------------------------------------------------------------------------- the README cannot drift


def test_readme_matches_the_parametrization() -> None:
    assert readme_table(README.read_text()) == render_table(), (
        "tests/faults/README.md is out of date: run `uv run python -m tests.faults.matrix --write`"
    )
    assert readme_table(README.read_text(), REPLICA_BEGIN, REPLICA_END) == render_replica_table(), (
        "tests/faults/README.md's replica rows are out of date: run `uv run python -m tests.faults.matrix --write`"
    )


def test_replica_rows_point_at_tests_that_check_for_leaks() -> None:
    """Each replica row names an e2e test that exists and ends by checking that nothing leaked: the
    ledger's running instances empty, and no gateway process left (the ``no_gateway_left`` fixture)."""
    import ast

    e2e = Path(__file__).parents[1] / "e2e"
    assert len({c.test for c in REPLICA_CELLS}) == len(REPLICA_CELLS)
    for cell in REPLICA_CELLS:
        tree = ast.parse((e2e / cell.module).read_text())
        tests = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}
        assert cell.function in tests, f"{cell.test}: no such test"
        test = tests[cell.function]
        assert "no_gateway_left" in [a.arg for a in test.args.args], f"{cell.test} does not check for gateways"
        assert "running() == []" in ast.unparse(test), f"{cell.test} does not check the ledger at the end"


def test_the_matrix_covers_enough() -> None:
    cells = CELLS + PROCESS_CELLS
    kinds = {c.fault.split(";")[0].split(":")[0].split("=")[0].split(",")[0] for c in cells}
    assert len(kinds) >= 15, kinds
    assert {c.column for c in cells} >= {"search", "create", "wait_running", "wait_ready", "smoke", "destroy",
                                         "logs"}
    assert len({c.id for c in CELLS}) == len(CELLS)


def test_a_sandbox_gone_for_good_closes_its_records(isolated_env: Path) -> None:
    """The sandbox a deployment lived on stops and another starts elsewhere: the old instances ended
    with their process, so ``list`` closes the records instead of warning forever, and neither
    ``destroy --all`` nor ``destroy --orphans`` fails on them."""
    from glmdeploy.sandbox.process import SandboxConfig, serve_in_thread

    from .conftest import register

    with serve_in_thread(SandboxConfig(time_scale=0.001)) as first:
        register(first, isolated_env)
        w = InProcess(sb=first, admin=Admin(first.url, first.api_key), home=isolated_env)
        assert w.glm("up", "-p", "4x3090", "--sandbox", "--yes", "--name", "old", "--ttl", LONG_TTL).exit_code == 0
        w.admin.close()
    with serve_in_thread(SandboxConfig(time_scale=0.001)) as second:
        register(second, isolated_env)
        w = InProcess(sb=second, admin=Admin(second.url, second.api_key), home=isolated_env)
        try:
            listed = w.glm("list", "--json")
            assert_one_line_reason(listed, 0)
            assert [d["status"] for d in json.loads(listed.stdout)["deployments"]] == ["destroyed"]
            assert "record closed" in listed.stderr
            assert_one_line_reason(w.glm("destroy", "--all", "--yes"), 0)
            assert_one_line_reason(w.glm("destroy", "--orphans", "--yes"), 0)
            assert_consistent(json.loads(w.glm("list", "--json").stdout), w.admin.ledger(), kept=0)
        finally:
            w.admin.close()
