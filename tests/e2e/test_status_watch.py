"""Issue 13 item 6 end to end: `status NAME --watch` on the sandbox shows health, uptime, cost and the
engine's load from its /metrics, the load changes while requests are in flight, and Ctrl-C ends only the
watch (exit 0, the instance still runs).

One deployment (2x5090: vLLM with --max-num-seqs 1, so a second request waits). Requests are held open
by the sandbox (POST /_sandbox/hold ... /_sandbox/release), not by timing. ``engine_death=5``: up's smoke
sends two generations and the test two held ones, so the fifth, sent while a watch runs, kills the engine
and the watch must show it unhealthy.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from waits import FAULTHANDLER_ENV, default_sigint, wait_exit, wait_until

from .conftest import GLMDEPLOY, LONG_TTL, Sandbox
from .pty_screen import run_on_pty

Cli = Callable[..., subprocess.CompletedProcess[str]]
StartSandbox = Callable[..., Sandbox]

pytestmark = pytest.mark.e2e


def _samples(cli: Cli, name: str, *args: str) -> list[dict[str, object]]:
    out = cli("status", name, "--watch", "--json", *args, check_exit=0).stdout
    return [json.loads(line) for line in out.splitlines()]


def test_status_watch_follows_the_engine_load_and_ctrl_c_leaves_the_deployment_running(
    cli: Cli, cli_env: dict[str, str], sandbox: StartSandbox, isolated_env: Path
) -> None:
    sb = sandbox(faults="engine_death=5")
    cli("up", "--profile", "2x5090", "--sandbox", "--yes", "--ttl", LONG_TTL, timeout=180, check_exit=0)
    name = str(json.loads(cli("status", "--json", check_exit=0).stdout)["name"])

    [idle] = _samples(cli, name, "--count", "1")
    assert (idle["health"], idle["running"], idle["waiting"], idle["kv_cache_usage"]) == ("healthy", 0, 0, 0)
    assert idle["status"] == "ready" and idle["instance_status"] == "running"
    assert isinstance(idle["cost_so_far"], float) and isinstance(idle["uptime_s"], int)

    # Two chat requests held open by the engine: with one sequence at a time, one runs and one waits.
    admin = {"Authorization": f"Bearer {sb.api_key}"}
    httpx.post(sb.url + "/_sandbox/hold", headers=admin, timeout=10).raise_for_status()
    from glmdeploy import deployment_health
    from glmdeploy.state import StateStore

    with StateStore.open() as store:
        d = store.get(name)
    answers: list[int] = []

    def ask() -> None:  # one generation request, as a client of the deployment would send it
        with deployment_health.endpoint_client(d) as http:
            r = http.post(f"{d.endpoint}/chat/completions", headers={"Authorization": f"Bearer {d.endpoint_key()}"},
                          json={"model": d.model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8},
                          timeout=120)
            answers.append(r.status_code)

    askers = [threading.Thread(target=ask) for _ in range(2)]
    for t in askers:
        t.start()
    try:
        wait_until(lambda: httpx.get(sb.url + "/_sandbox/hold", headers=admin, timeout=10).json()["held"] == 2 or None,
                   "the engine to hold both requests")
        busy = _samples(cli, name, "--count", "2", "--interval", "0.05")
        assert len(busy) == 2
        for s in busy:
            assert (s["running"], s["waiting"]) == (1, 1)
            assert isinstance(s["kv_cache_usage"], float) and 0 < s["kv_cache_usage"] < 1
        plain = cli("status", name, "--watch", "--count", "1", check_exit=0).stdout.splitlines()
        assert len(plain) == 1 and "health healthy" in plain[0] and "running 1  waiting 1  kv " in plain[0]
        # On a terminal: one block, redrawn in place (rich moves the cursor up over the previous one).
        tty = run_on_pty({**cli_env, "TERM": "xterm", "NO_COLOR": "1"},
                         ["status", name, "--watch", "--count", "2", "--interval", "0.05"], size=(30, 100))
        assert tty.code == 0, tty.screen
        assert tty.screen.count("KV cache") >= 2 and "\x1b[1A" in tty.screen, tty.screen
        text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", tty.screen)
        assert re.search(r"KV cache\s+(<0\.1|[1-9][0-9.]*)%", text), text
        assert re.search(r"running\s+1\s", text) and re.search(r"waiting\s+1\s", text), text
    finally:
        httpx.post(sb.url + "/_sandbox/release", headers=admin, timeout=10).raise_for_status()
        for t in askers:
            t.join(120)
    assert answers == [200, 200]
    [after] = _samples(cli, name, "--count", "1")
    assert (after["running"], after["waiting"], after["kv_cache_usage"]) == (0, 0, 0)

    # The engine dies while a watch runs: the watch says so. Then Ctrl-C ends the watch with exit 0 and
    # destroys nothing.
    proc = subprocess.Popen([*GLMDEPLOY, "status", name, "--watch", "--interval", "0.05"],
                            env={**cli_env, **FAULTHANDLER_ENV}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, text=True, preexec_fn=default_sigint)
    assert proc.stdout is not None
    first = proc.stdout.readline()
    assert f"{name}: ready" in first and "health healthy" in first
    ask()  # the fifth generation: the engine core dies under it (vLLM: HTTP 500, then the server exits)
    assert answers[-1] == 500
    for seen, text in enumerate(proc.stdout):  # event-driven: the next lines the watch prints
        assert seen < 2000, "the watch kept saying healthy after the engine died"
        if "health unhealthy" in text:
            assert "the engine exited" in text or "does not answer" in text, text
            break
    else:
        raise AssertionError("the watch ended without showing the engine unhealthy")
    os.kill(proc.pid, signal.SIGINT)
    assert wait_exit(proc) == 0
    assert "Traceback" not in (proc.stderr.read() if proc.stderr else "")
    status = json.loads(cli("status", name, "--json", check_exit=0).stdout)
    assert (status["status"], status["instance_status"], status["health"]) == ("ready", "running", "unhealthy")
    assert len(sb.running()) == 1

    cli("destroy", name, "--yes", check_exit=0)
    assert sb.running() == []
