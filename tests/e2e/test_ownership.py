"""Issue 10 §1: never destroy what isn't yours. Two machines (two state dirs), one sandbox account.

Machine B is a second GLMDEPLOY_HOME whose sandbox.json points at machine A's running sandbox:
the same account seen from another machine, exactly as two laptops sharing one Vast key.
"""

from __future__ import annotations

import json
import os
import pty
import select
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from .conftest import GLMDEPLOY, LONG_TTL, Sandbox

Cli = Callable[..., subprocess.CompletedProcess[str]]
StartSandbox = Callable[..., Sandbox]

pytestmark = pytest.mark.e2e


def machine(cli_env: dict[str, str], home: Path, sandbox_home: Path, **extra: str) -> Cli:
    """A `cli` for another state dir that sees the sandbox running from ``sandbox_home``."""
    home.mkdir(mode=0o700, parents=True, exist_ok=True)
    shutil.copy(sandbox_home / "sandbox.json", home / "sandbox.json")
    env = {**cli_env, "GLMDEPLOY_HOME": str(home), **extra}

    def run(*args: str, timeout: float = 90, check_exit: int | None = None) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([*GLMDEPLOY, *args], env=env, capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)
        if check_exit is not None:
            assert proc.returncode == check_exit, f"exit {proc.returncode}\nstdout:{proc.stdout}\nstderr:{proc.stderr}"
        return proc

    run.env = env  # type: ignore[attr-defined]
    return run


def answer_on_a_terminal(env: dict[str, str], args: list[str], answer: str) -> tuple[int, str, str]:
    """Run the CLI with a terminal on stdin, wait for its question (on stderr), answer it.

    Returns the exit code, stdout, and stderr (the question included).
    """
    controller, terminal = pty.openpty()
    proc = subprocess.Popen([*GLMDEPLOY, *args], env=env, stdin=terminal, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    os.close(terminal)
    assert proc.stderr is not None
    asked = ""
    deadline = time.monotonic() + 60
    while "[y/N]" not in asked and time.monotonic() < deadline:  # wait for the prompt, not for a clock
        ready, _, _ = select.select([proc.stderr], [], [], 1.0)
        if ready:
            chunk = os.read(proc.stderr.fileno(), 4096).decode()
            if not chunk:
                break
            asked += chunk
    os.write(controller, (answer + "\n").encode())
    out, rest = proc.communicate(timeout=60)
    os.close(controller)
    return proc.returncode, out, asked + rest


def live_labels(sb: Sandbox) -> dict[int, str]:
    return {i["id"]: i["label"] for i in sb.running()}


def test_machine_b_never_destroys_machine_a_live_deployment(
    cli: Cli, cli_env: dict[str, str], sandbox: StartSandbox, isolated_env: Path, tmp_path: Path
) -> None:
    sb = sandbox()
    cli("up", "--profile", "4x3090", "--sandbox", "--yes", "--name", "team-a", "--ttl", LONG_TTL, check_exit=0)
    a_owner = (isolated_env / "owner-id").read_text().strip()
    [(instance_id, label)] = live_labels(sb).items()
    assert label.startswith(f"glmdeploy:{a_owner}:")
    b = machine(cli_env, tmp_path / "machine-b", isolated_env)

    # B's list shows A's instance: foreign, with its $/h, and no orphan.
    listed = json.loads(b("list", "--sandbox", "--json", check_exit=0).stdout)
    assert listed["deployments"] == [] and listed["orphans"] == []
    [foreign] = listed["foreign"]
    assert foreign["instance_id"] == instance_id and foreign["owner"] == a_owner
    assert foreign["dph_total"] > 0
    human = b("list", "--sandbox", check_exit=0)
    assert "foreign" in human.stdout and str(instance_id) in human.stdout
    assert "1 foreign instance(s): rented by other owners" in human.stderr, human.stderr
    assert f"{foreign['dph_total']:.3f}" in human.stdout

    # B's sweep leaves it running.
    sweep = b("destroy", "--orphans", "--yes", "--sandbox", check_exit=0)
    assert "nothing to destroy" in sweep.stderr
    assert live_labels(sb) == {instance_id: label}
    # Naming it without --include-foreign does not touch it either.
    named = b("destroy", "--orphans", "--instance", str(instance_id), "--yes", "--sandbox", check_exit=0)
    assert "another owner" in named.stderr and live_labels(sb) == {instance_id: label}
    # --include-foreign alone is refused: never a wholesale sweep of other owners.
    refused = b("destroy", "--include-foreign", "--yes", "--sandbox", check_exit=2)
    assert refused.stderr.count("error:") == 1 and "--instance" in refused.stderr
    # --older-than as the selector: A's instance is younger than 30 days, so it stays.
    young = b("destroy", "--include-foreign", "--older-than", "30d", "--yes", "--sandbox", check_exit=0)
    assert "nothing to destroy" in young.stderr and live_labels(sb) == {instance_id: label}
    # A's own view is untouched: still ready, no orphan.
    mine = json.loads(cli("list", "--json", check_exit=0).stdout)
    assert [d["status"] for d in mine["deployments"]] == ["ready"] and mine["orphans"] == []

    # --include-foreign with its id: the confirmation names it; "no" keeps it.
    b_env: dict[str, str] = b.env  # type: ignore[attr-defined]
    args = ["destroy", "--include-foreign", "--instance", str(instance_id), "--sandbox"]
    code, out, err = answer_on_a_terminal(b_env, args, "n")
    question = err[err.index("Destroy 1 instance(s)"):]
    assert code == 1 and str(instance_id) in question and label in question and a_owner in question, err
    assert live_labels(sb) == {instance_id: label}
    code, out, err = answer_on_a_terminal(b_env, [*args, "--json"], "y")
    assert code == 0, err
    assert str(instance_id) in err and label in err
    assert json.loads(out)["destroyed"] == [
        {"instance_id": instance_id, "label": label, "owner": a_owner, "foreign": True, "result": "destroyed"}
    ]
    assert sb.running() == []
    # A learns it is gone on its next look.
    assert [d["status"] for d in json.loads(cli("list", "--json", check_exit=0).stdout)["deployments"]] == [
        "destroyed"
    ]


def test_older_than_selects_foreign_instances_by_age(
    cli: Cli, cli_env: dict[str, str], sandbox: StartSandbox, isolated_env: Path, tmp_path: Path
) -> None:
    sb = sandbox()
    cli("up", "--profile", "4x3090", "--sandbox", "--yes", "--ttl", LONG_TTL, check_exit=0)
    [instance_id] = live_labels(sb)
    b = machine(cli_env, tmp_path / "machine-b", isolated_env)
    # On the sandbox's clock (500x) the instance has been up for far more than a simulated second.
    old = json.loads(b("destroy", "--include-foreign", "--older-than", "1s", "--yes", "--sandbox", "--json",
                       check_exit=0).stdout)
    assert [(r["instance_id"], r["result"]) for r in old["destroyed"]] == [(instance_id, "destroyed")]
    assert sb.running() == []


def test_a_shared_ci_scope_sweep_cleans_up_a_killed_runner_but_not_a_teammate(
    cli: Cli, cli_env: dict[str, str], sandbox: StartSandbox, isolated_env: Path, tmp_path: Path
) -> None:
    sb = sandbox(faults="never_ready")
    # A teammate's deployment, live and tracked on machine A (kept although it never got ready).
    cli("up", "--profile", "4x3090", "--sandbox", "--yes", "--keep-on-failure", "--timeout", "2m", "--ttl", LONG_TTL,
        check_exit=4)
    [(teammate_id, _)] = live_labels(sb).items()
    # CI runner 1 in the shared scope is killed with -9 while its `ci` waits for readiness.
    runner1 = machine(cli_env, tmp_path / "runner-1", isolated_env, GLMDEPLOY_OWNER="acme-ci")
    env1: dict[str, str] = runner1.env  # type: ignore[attr-defined]
    proc = subprocess.Popen([*GLMDEPLOY, "ci", "-p", "4x3090", "--sandbox", "--json", "--ttl", LONG_TTL], env=env1,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
    try:
        _wait_for_phase(proc, "wait_ready")
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    leaked = {i: lab for i, lab in live_labels(sb).items() if i != teammate_id}
    [(leaked_id, leaked_label)] = leaked.items()
    assert leaked_label.startswith("glmdeploy:acme-ci:")
    # CI runner 2: a fresh state dir, same scope. Guarded by an age above any job's run time, its
    # sweep leaves the (young) instance, which a concurrent job could still be using...
    runner2 = machine(cli_env, tmp_path / "runner-2", isolated_env, GLMDEPLOY_OWNER="acme-ci")
    guarded = runner2("destroy", "--orphans", "--older-than", "30d", "--yes", "--sandbox", check_exit=0)
    assert "left alone" in guarded.stderr and leaked_id in live_labels(sb)
    # ...and once it is older than that (1 s here, on the sandbox's fast clock) takes it, and nothing else.
    swept = json.loads(runner2("destroy", "--orphans", "--older-than", "1s", "--yes", "--sandbox", "--json",
                               check_exit=0).stdout)
    assert [(r["instance_id"], r["result"]) for r in swept["destroyed"]] == [(leaked_id, "destroyed")]
    assert list(live_labels(sb)) == [teammate_id]
    cli("destroy", "--yes", check_exit=0)
    assert sb.running() == []


def test_older_than_never_spares_an_orphan_this_state_dir_recorded(
    cli: Cli, cli_env: dict[str, str], sandbox: StartSandbox
) -> None:
    """The age guard is for instances other machines may run; our own dead `up`'s instance is ours."""
    sb = sandbox(faults="never_ready")
    proc = subprocess.Popen([*GLMDEPLOY, "up", "--sandbox", "--yes", "--json", "-p", "4x3090",
                             "--ttl", LONG_TTL],
                            env=cli_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                            text=True)
    try:
        _wait_for_phase(proc, "wait_ready")
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    [leaked_id] = live_labels(sb)
    swept = json.loads(cli("destroy", "--orphans", "--older-than", "30d", "--yes", "--json", check_exit=0).stdout)
    assert [(r["instance_id"], r["result"]) for r in swept["destroyed"]] == [(leaked_id, "destroyed")]
    assert sb.running() == []


def _wait_for_phase(proc: subprocess.Popen[str], phase: str, timeout: float = 60) -> list[dict[str, Any]]:
    seen: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        seen.append(json.loads(line))
        if seen[-1].get("phase") == phase:
            return seen
    raise AssertionError(f"never reached {phase}: {seen}")
