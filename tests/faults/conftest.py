"""Fixtures for the fault matrix and the crash-safety suite.

Speed is the point of this file: most cells run the real CLI *in-process* (``typer.testing.CliRunner``
over ``glmdeploy.cli.app``) against a sandbox served from a thread of the test process. The sandbox is
registered in ``$GLMDEPLOY_HOME/sandbox.json`` exactly as ``glmdeploy sandbox start`` does (URL, key,
this process's PID and the world's token), so ``--sandbox`` and every command that looks a sandbox
deployment up find it through the ordinary path (``running()`` probes ``/_sandbox/health``, which
answers with this PID and token). Subprocesses are used only where a real process is the point:
kill -9, signals, a sandbox that dies and comes back.

Every cell ends with ``assert_consistent``: the sandbox's ledger and the state DB must agree.
"""

from __future__ import annotations

import itertools
import json
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from glmdeploy.sandbox.process import SandboxConfig, SandboxInfo, ThreadedSandbox, serve_in_thread

GLMDEPLOY = [sys.executable, "-m", "glmdeploy"]
# Real seconds per simulated second. 0.001 keeps a whole deployment well under a second of sandbox time.
TIME_SCALE = 0.001
# The sandbox's clock runs fast: at the default TTL (readiness timeout + 30m) its watchdog would destroy
# a deployment within seconds of real time. Deployments a test uses after `up` get a long one.
LONG_TTL = "1000h"
STATUSES = {"creating", "starting", "loading", "ready", "failed", "destroying", "destroyed", "orphaned"}


@dataclass
class Outcome:
    """What one CLI run left behind: exit code and both streams."""

    args: tuple[str, ...]
    exit_code: int
    stdout: str
    stderr: str

    def error_lines(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if line.startswith("error:")]

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.stdout.splitlines() if line.strip().startswith("{")]

    def describe(self) -> str:
        return f"glmdeploy {' '.join(self.args)} -> {self.exit_code}\nstdout:\n{self.stdout}\nstderr:\n{self.stderr}"


@dataclass
class Admin:
    """The sandbox's admin endpoints (not part of Vast): ledger, faults, requests."""

    url: str
    api_key: str
    _http: httpx.Client = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._http = httpx.Client(
            base_url=self.url, headers={"Authorization": f"Bearer {self.api_key}"}, timeout=10, trust_env=False
        )

    def close(self) -> None:
        self._http.close()

    def ledger(self) -> dict[str, Any]:
        r = self._http.get("/_sandbox/ledger")
        r.raise_for_status()
        data: dict[str, Any] = r.json()
        return data

    def live(self) -> list[dict[str, Any]]:
        return [i for i in self.ledger()["instances"] if i["status"] != "destroyed"]

    def set_faults(self, spec: str) -> None:
        r = self._http.post("/_sandbox/faults", json={"spec": spec})
        assert r.status_code == 200, r.text

    def requests(self) -> list[dict[str, Any]]:
        reqs: list[dict[str, Any]] = self.request_log()["requests"]
        return reqs

    def release(self) -> None:
        """Let every create answer that ``create_timeout`` holds back go (it is then dropped)."""
        self._http.post("/_sandbox/release").raise_for_status()

    def request_log(self) -> dict[str, Any]:
        """The whole ``/_sandbox/requests`` body: answered requests and those ``in_flight``."""
        r = self._http.get("/_sandbox/requests")
        r.raise_for_status()
        body: dict[str, Any] = r.json()
        return body


def register(sb: ThreadedSandbox, home: Path) -> SandboxInfo:
    """Record a threaded sandbox in sandbox.json the way ``run_foreground`` records a detached one."""
    port = int(sb.url.rsplit(":", 1)[1])
    info = SandboxInfo(url=sb.url, api_key=sb.api_key, pid=os.getpid(), token=sb.world.token, port=port,
                       seed=sb.world.seed, time_scale=sb.world.time_scale, started_at=time.time())
    home.mkdir(parents=True, exist_ok=True)
    target = home / "sandbox.json"
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(info.model_dump_json(indent=2))
    return info


@dataclass
class InProcess:
    """A threaded sandbox registered for ``--sandbox``, plus the CLI run in this process."""

    sb: ThreadedSandbox
    admin: Admin
    home: Path
    runs: list[Outcome] = field(default_factory=list)

    def glm(self, *args: str) -> Outcome:
        from glmdeploy.cli import app

        result = CliRunner().invoke(app, list(args), catch_exceptions=True)
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            raise AssertionError(f"glmdeploy {' '.join(args)} raised {result.exception!r}") from result.exception
        outcome = Outcome(tuple(args), result.exit_code, result.stdout, result.stderr)
        self.runs.append(outcome)
        return outcome


@pytest.fixture
def in_process(isolated_env: Path) -> Iterator[Callable[..., InProcess]]:
    """``in_process(faults=...)``: a fresh threaded sandbox for this test, found by ``--sandbox``."""
    from contextlib import ExitStack

    with ExitStack() as stack:

        def start(faults: str = "", seed: int = 0, time_scale: float = TIME_SCALE) -> InProcess:
            sb = stack.enter_context(serve_in_thread(SandboxConfig(time_scale=time_scale, faults=faults or None,
                                                                   seed=seed)))
            register(sb, isolated_env)
            admin = Admin(sb.url, sb.api_key)
            stack.callback(admin.close)
            return InProcess(sb=sb, admin=admin, home=isolated_env)

        yield start


# --------------------------------------------------------------------------- subprocess side


@pytest.fixture
def cli_env(isolated_env: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VAST_", "GLMDEPLOY_", "OPENAI_"))}
    env["GLMDEPLOY_HOME"] = str(isolated_env)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def run_cli(env: dict[str, str], *args: str, timeout: float = 90) -> Outcome:
    proc = subprocess.run([*GLMDEPLOY, *args], env=env, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)
    return Outcome(tuple(args), proc.returncode, proc.stdout, proc.stderr)


@dataclass
class SandboxProcess:
    """A detached ``glmdeploy sandbox start`` process in this test's home."""

    env: dict[str, str]
    url: str = ""
    api_key: str = ""
    pid: int = 0
    port: int = 0

    def start(self, faults: str = "", time_scale: float = 0.002, port: int = 0) -> Admin:
        args = ["sandbox", "start", "--time-scale", str(time_scale), "--port", str(port)]
        if faults:
            args += ["--faults", faults]
        started = run_cli(self.env, *args)
        assert started.exit_code == 0, started.describe()
        status = json.loads(run_cli(self.env, "sandbox", "status", "--json").stdout)
        self.url, self.api_key, self.pid = status["url"], status["api_key"], status["pid"]
        self.port = int(self.url.rsplit(":", 1)[1])
        return Admin(self.url, self.api_key)

    def kill9(self) -> None:
        os.kill(self.pid, 9)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                os.kill(self.pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.02)
        raise AssertionError(f"sandbox {self.pid} survived SIGKILL")

    def stop(self) -> None:
        run_cli(self.env, "sandbox", "stop")


@pytest.fixture
def sandbox_process(cli_env: dict[str, str]) -> Iterator[SandboxProcess]:
    proc = SandboxProcess(cli_env)
    yield proc
    proc.stop()


# --------------------------------------------------------------------------- invariants


def state_rows(home: Path) -> list[dict[str, Any]]:
    """Every row of the state DB, read with plain sqlite3: a row that does not parse fails here."""
    from glmdeploy.state import StateStore

    path = home / "state.db"
    if not path.exists():
        return []
    conn = sqlite3.connect(path, timeout=10)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        conn.close()
    with StateStore.open() as store:  # the model validates every column on the way out
        return [d.public() | {"label": d.label, "api_url": d.api_url} for d in store.list(include_destroyed=True)]


def assert_consistent(listed: dict[str, Any], ledger: dict[str, Any], *, kept: int = 0) -> None:
    """(b) and (c): nothing billing that is not wanted, nothing rented twice, DB and ledger agree.

    ``listed`` is ``glmdeploy list --json`` (reconciled against the sandbox just before),
    ``kept`` the number of instances a cell deliberately keeps (``--keep-on-failure``, or a ready one).
    """
    live = {i["id"] for i in ledger["instances"] if i["status"] != "destroyed"}
    assert len(live) == kept, f"expected {kept} live instance(s), ledger has {sorted(live)}: {ledger['instances']}"
    # Nothing rented twice: one instance per deployment label, and no offer held by two instances at once.
    labels = [i["label"] for i in ledger["instances"]]
    assert len(labels) == len(set(labels)), f"a deployment rented twice: {ledger['instances']}"
    ours = [r for r in ledger["rentals"] if r["by"] != "someone-else"]
    assert len(ours) == len(ledger["instances"]), f"rentals without an instance: {ledger['rentals']}"
    by_offer: dict[int, list[dict[str, Any]]] = {}
    for i in ledger["instances"]:
        by_offer.setdefault(i["offer_id"], []).append(i)
    for held in by_offer.values():
        held.sort(key=lambda i: i["created_at"])
        for before, after in itertools.pairwise(held):
            assert before["destroyed_at"] is not None and before["destroyed_at"] <= after["created_at"], held
    assert ledger["errors"] == [], ledger["errors"]
    rows = listed["deployments"]
    for row in rows:
        assert row["status"] in STATUSES, row
        iid = row["instance_id"]
        if is_active(row):
            assert iid is not None and iid in live, f"row {row['name']} ({row['status']}): {iid} not live"
        else:
            assert iid not in live, f"row {row['name']} is {row['status']} but instance {iid} still bills"
    tracked = {r["instance_id"] for r in rows if is_active(r)}
    assert live <= tracked, f"live instances {sorted(live - tracked)} have no active row"
    assert listed["orphans"] == [], listed["orphans"]


def is_active(row: dict[str, Any]) -> bool:
    """The JSON twin of ``Deployment.is_active``."""
    return row["destroyed_at"] is None and row["status"] != "destroyed"


# --------------------------------------------------------------------------- figures

_FIGURES: dict[str, Any] = {"cells": [], "kills": [], "sighups": []}


@pytest.fixture
def fault_figures() -> dict[str, Any]:
    """Per-cell records (faults fired, instances rented, leaked) for the summary and docs/reliability.md."""
    return _FIGURES


def figures_summary(figures: dict[str, Any]) -> dict[str, int]:
    cells, kills, sighups = figures["cells"], figures["kills"], figures.get("sighups", [])
    return {
        "cells": len(cells),
        "faults_injected": sum(c["faults_fired"] for c in cells),
        "cells_survived": sum(1 for c in cells if c["leaked"] == 0),
        "instances_rented": sum(c["rented"] for c in cells) + sum(k["rented"] for k in [*kills, *sighups]),
        "kill9_points": len(kills),
        "sighup_points": len(sighups),
        "leaked": sum(c["leaked"] for c in cells) + sum(k["leaked"] for k in [*kills, *sighups]),
    }


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not _FIGURES["cells"] and not _FIGURES["kills"] and not _FIGURES["sighups"]:
        return
    summary = figures_summary(_FIGURES)
    terminalreporter.write_sep("-", "fault matrix figures")
    terminalreporter.write_line(json.dumps(summary))
    target = os.environ.get("GLMDEPLOY_FAULT_FIGURES")
    if target:
        Path(target).write_text(json.dumps({"summary": summary, **_FIGURES}, indent=2) + "\n")
