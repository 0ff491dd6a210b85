"""End-to-end fixtures: the real CLI as a subprocess against a real sandbox process on 127.0.0.1.

``sandbox(faults=..., time_scale=...)`` starts ``glmdeploy sandbox start`` in this test's
GLMDEPLOY_HOME and stops it afterwards; ``cli(...)`` runs ``glmdeploy`` with that home;
``ledger()`` reads the sandbox's accounting so a test can prove nothing is left running.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

GLMDEPLOY = [sys.executable, "-m", "glmdeploy"]
TIME_SCALE = 0.002
# The sandbox's clock runs fast: at the default TTL (readiness timeout + 30m) its watchdog would destroy
# a deployment within seconds of real time. Deployments a test uses after `up` get a long one.
LONG_TTL = "1000h"


@dataclass
class Sandbox:
    url: str
    api_key: str
    pid: int

    def ledger(self) -> dict[str, Any]:
        r = httpx.get(self.url + "/_sandbox/ledger", headers={"Authorization": f"Bearer {self.api_key}"}, timeout=10)
        r.raise_for_status()
        data: dict[str, Any] = r.json()
        return data

    def running(self) -> list[dict[str, Any]]:
        return [i for i in self.ledger()["instances"] if i["status"] != "destroyed"]

    def set_faults(self, spec: str) -> None:
        r = httpx.post(
            self.url + "/_sandbox/faults",
            json={"spec": spec},
            headers={"Authorization": f"Bearer {self.api_key}"},
            timeout=10,
        )
        r.raise_for_status()


@pytest.fixture
def cli_env(isolated_env: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VAST_", "GLMDEPLOY_", "OPENAI_"))}
    env["GLMDEPLOY_HOME"] = str(isolated_env)
    env["PYTHONUNBUFFERED"] = "1"
    return env


@pytest.fixture
def cli(cli_env: dict[str, str]) -> Callable[..., subprocess.CompletedProcess[str]]:
    def run(*args: str, timeout: float = 60, check_exit: int | None = None) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [*GLMDEPLOY, *args], env=cli_env, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
        )
        if check_exit is not None:
            assert proc.returncode == check_exit, f"exit {proc.returncode}\nstdout:{proc.stdout}\nstderr:{proc.stderr}"
        return proc

    return run


@pytest.fixture
def sandbox(cli: Callable[..., subprocess.CompletedProcess[str]]) -> Iterator[Callable[..., Sandbox]]:
    started: list[bool] = []

    def start(faults: str = "", time_scale: float = TIME_SCALE, seed: int = 0) -> Sandbox:
        args = ["sandbox", "start", "--time-scale", str(time_scale), "--seed", str(seed)]
        if faults:
            args += ["--faults", faults]
        cli(*args, check_exit=0)
        started.append(True)
        status = json.loads(cli("sandbox", "status", "--json", check_exit=0).stdout)
        return Sandbox(status["url"], status["api_key"], status["pid"])

    yield start
    if started:
        cli("sandbox", "stop")


def events(stdout: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]
