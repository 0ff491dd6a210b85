"""``glmdeploy sandbox start|status|stop`` as real subprocesses, each with its own GLMDEPLOY_HOME."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from glmdeploy.sandbox import process
from waits import HANG_S, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

GLMDEPLOY = Path(sys.executable).parent / "glmdeploy"


def cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(GLMDEPLOY), "sandbox", *args], capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL, env=dict(os.environ))


def status_json() -> dict[str, Any]:
    result = cli("status", "--json")
    assert result.returncode == 0, result.stderr
    data: dict[str, Any] = json.loads(result.stdout)
    return data


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture(autouse=True)
def _cleanup(isolated_env: Path) -> Iterator[None]:
    yield
    # Whatever a test left running in its home is stopped (only a PID the sandbox vouches for).
    info = process.read_state()
    if info is not None and process.probe(info):
        os.kill(info.pid, signal.SIGKILL)


def test_start_status_second_start_stop(isolated_env: Path) -> None:
    assert status_json() == {"running": False, "url": None, "api_key": None, "pid": None}
    started = cli("start", "--time-scale", "0.001", "--seed", "3")
    assert started.returncode == 0, started.stderr
    assert "sandbox started at http://127.0.0.1:" in started.stderr
    state = status_json()
    assert state["running"] is True and state["url"].startswith("http://127.0.0.1:") and state["pid"] > 0
    assert state["pid"] != os.getpid() and _alive(state["pid"])
    record = isolated_env / "sandbox.json"
    assert stat.S_IMODE(record.stat().st_mode) == 0o600
    health = httpx.get(f"{state['url']}/_sandbox/health", timeout=5).json()
    assert health["pid"] == state["pid"] and health["seed"] == 3
    # The key works against the Vast API.
    listed = httpx.get(f"{state['url']}/api/v1/instances/", headers={"Authorization": f"Bearer {state['api_key']}"})
    assert listed.status_code == 200

    again = cli("start")
    assert again.returncode == 0 and "already running" in again.stderr
    assert status_json() == state

    stopped = cli("stop")
    assert stopped.returncode == 0 and f"sandbox stopped (pid {state['pid']})" in stopped.stderr
    wait_until(lambda: not _alive(state["pid"]), f"sandbox pid {state['pid']} to exit")
    assert not record.exists()
    assert status_json()["running"] is False
    nothing = cli("stop")
    assert nothing.returncode == 0 and "no sandbox running" in nothing.stderr


def test_stop_never_signals_a_process_it_cannot_verify(isolated_env: Path) -> None:
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        isolated_env.mkdir(parents=True, exist_ok=True)
        free = process.bind(0)
        port = free.getsockname()[1]
        free.close()  # nothing listens there
        (isolated_env / "sandbox.json").write_text(json.dumps({
            "url": f"http://127.0.0.1:{port}", "api_key": "k", "pid": bystander.pid, "token": "t", "port": port,
            "seed": 0, "time_scale": 0.005}))
        assert status_json()["running"] is False
        result = cli("stop")
        assert result.returncode == 0 and "no sandbox running" in result.stderr
        assert bystander.poll() is None  # still alive
        assert not (isolated_env / "sandbox.json").exists()
    finally:
        bystander.kill()
        bystander.wait(5)


@pytest.mark.parametrize(("args", "needle"), [
    (["--faults", "http429:nowhere=1"], "--faults"),
    (["--faults", "teleport"], "unknown fault"),
    (["--time-scale", "0"], "--time-scale"),
])
def test_bad_options_exit_2_with_one_line(args: list[str], needle: str) -> None:
    result = cli("start", *args)
    assert result.returncode == 2
    assert needle in result.stderr and "Traceback" not in result.stderr
    assert status_json()["running"] is False


def test_foreground_serves_until_interrupted(isolated_env: Path) -> None:
    child = subprocess.Popen([str(GLMDEPLOY), "sandbox", "start", "--foreground", "--faults", "exited=1"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ))
    try:
        def serving() -> process.SandboxInfo | None:
            info = process.read_state()
            return info if info is not None and process.probe(info) else None

        info = wait_until(serving, "the foreground sandbox to record itself and answer")
        assert info.pid == child.pid and info.faults == "exited=1"
        child.send_signal(signal.SIGINT)
        child.wait(HANG_S)
        assert not (isolated_env / "sandbox.json").exists()
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(5)


def test_ensure_running_starts_once_and_is_reused(isolated_env: Path) -> None:
    first = process.ensure_running(time_scale=0.001)
    try:
        second = process.ensure_running()
        assert second == first
        assert status_json() == {"running": True, "url": first.url, "api_key": first.api_key, "pid": first.pid}
    finally:
        assert process.stop() == first
    assert process.status().running is False


def test_busy_port_is_reported_not_hidden(isolated_env: Path) -> None:
    taken = process.bind(0)
    try:
        result = cli("start", "--port", str(taken.getsockname()[1]))
        assert result.returncode == 1
        assert "exited at start" in result.stderr and "sandbox.log" in result.stderr
        assert "Traceback" not in result.stderr
        assert "cannot listen on 127.0.0.1" in (isolated_env / "sandbox.log").read_text()
    finally:
        taken.close()
    assert status_json()["running"] is False
