"""Fixtures for the secrets audit: the real CLI as a subprocess, and a sandbox process with a chosen key.

The sandbox is started with ``glmdeploy sandbox start`` and ``GLMDEPLOY_SANDBOX_KEY`` (docs/sandbox.md),
so the "Vast.ai account key" every command sends is one the audit recognises; it is stopped by the
fixture whatever the test did.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

GLMDEPLOY = [sys.executable, "-m", "glmdeploy"]
TIME_SCALE = 0.002


@dataclass
class Run:
    """One CLI invocation as a user or a CI log would see it."""

    args: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str

    @property
    def where(self) -> str:
        return "glmdeploy " + " ".join(self.args)


@dataclass
class AuditCli:
    """Runs ``glmdeploy`` in this test's GLMDEPLOY_HOME and keeps every run for the final scan.

    By default in this process (typer's CliRunner: the same printing code, a fraction of the
    start-up time); ``separate=True`` runs a real ``python -m glmdeploy`` subprocess.
    """

    env: dict[str, str]
    runs: list[Run] = field(default_factory=list)

    def __call__(
        self,
        *args: str,
        exit_code: int | None = 0,
        extra_env: dict[str, str] | None = None,
        separate: bool = False,
        timeout: float = 90,
    ) -> Run:
        if separate:
            env = dict(self.env, **(extra_env or {}))
            proc = subprocess.run(
                [*GLMDEPLOY, *args],
                env=env,
                capture_output=True,
                text=True,
                timeout=timeout,
                stdin=subprocess.DEVNULL,
            )
            run = Run(tuple(args), proc.returncode, proc.stdout, proc.stderr)
        else:
            from glmdeploy.cli import app

            result = CliRunner().invoke(app, list(args), env=extra_env)
            stderr = result.stderr
            if result.exc_info is not None and not isinstance(result.exception, SystemExit):
                # An exception that escaped would be a traceback on the user's terminal: scan it too.
                stderr += "".join(traceback.format_exception(*result.exc_info))
            run = Run(tuple(args), result.exit_code, result.stdout, stderr)
        self.runs.append(run)
        if exit_code is not None:
            assert run.returncode == exit_code, f"{run.where}: exit {run.returncode}\n{run.stdout}\n{run.stderr}"
        return run


@dataclass
class KeyedSandbox:
    url: str
    api_key: str
    pid: int

    def admin(self, path: str) -> Any:
        r = httpx.get(self.url + path, headers={"Authorization": f"Bearer {self.api_key}"}, timeout=10)
        r.raise_for_status()
        return r.json()

    def set_faults(self, spec: str) -> None:
        r = httpx.post(self.url + "/_sandbox/faults", json={"spec": spec}, timeout=10)
        r.raise_for_status()

    def running(self) -> list[dict[str, Any]]:
        return [i for i in self.admin("/_sandbox/ledger")["instances"] if i["status"] != "destroyed"]


@pytest.fixture
def audit_cli(isolated_env: Path) -> AuditCli:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VAST_", "GLMDEPLOY_", "OPENAI_"))}
    env["GLMDEPLOY_HOME"] = str(isolated_env)
    env["PYTHONUNBUFFERED"] = "1"
    return AuditCli(env)


@pytest.fixture
def keyed_sandbox(audit_cli: AuditCli) -> Iterator[Callable[[str], KeyedSandbox]]:
    """``start(key)``: a sandbox process whose account key is ``key``."""
    started: list[bool] = []

    def start(key: str) -> KeyedSandbox:
        audit_cli(
            "sandbox", "start", "--time-scale", str(TIME_SCALE), extra_env={"GLMDEPLOY_SANDBOX_KEY": key}, separate=True
        )
        started.append(True)
        status = json.loads(audit_cli("sandbox", "status", "--json").stdout)
        assert status["running"] and status["api_key"] == key
        return KeyedSandbox(status["url"], status["api_key"], status["pid"])

    yield start
    if started:
        audit_cli("sandbox", "stop", exit_code=None)
