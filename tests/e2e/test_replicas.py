"""Issue 12: N replicas on separate rentals behind the real SMG gateway, end to end on the sandbox.

No mock of the gateway: ``smg`` (a dev dependency, pinned) runs for real in front of sandbox replicas.
Waits are event-driven: the CLI's own JSON events, a status that reports a replica lost, a port that closes.
"""

from __future__ import annotations

import json
import os
import shlex
import socket
import ssl
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from waits import wait_until

from .conftest import LONG_TTL, events

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

SMG = Path(sys.executable).with_name("smg")
VASTAI = Path(sys.executable).with_name("vastai")
CHAT = "POST /v1/chat/completions"

Cli = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture(autouse=True)
def _needs_smg() -> None:
    if not SMG.exists():
        pytest.skip("smg (dev dependency smg==1.13.0) is not installed")


def _env(cli: Cli, name: str) -> dict[str, str]:
    out = cli("env", name, check_exit=0).stdout
    return {k.removeprefix("export "): shlex.split(v)[0] if v else ""
            for k, v in (line.split("=", 1) for line in out.splitlines())}


def _status(cli: Cli, name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(cli("status", name, "--json", check_exit=0).stdout)
    return data


def _chats(base_url: str, key: str, model: str, n: int) -> int:
    import openai

    client = openai.OpenAI(base_url=base_url, api_key=key, max_retries=0, timeout=60)
    ok = 0
    for i in range(n):
        r = client.chat.completions.create(model=model, max_tokens=8,
                                           messages=[{"role": "user", "content": f"hello {i}"}])
        assert r.choices[0].message is not None
        ok += 1
    return ok


def _served(cli: Cli, replica: str) -> int:
    """Chat requests a replica's engine logged (its access log is in the instance's logs)."""
    return cli("logs", replica, "--tail", "5000", check_exit=0).stdout.count(CHAT)


def _port_open(url: str) -> bool:
    from urllib.parse import urlparse

    parts = urlparse(url)
    try:
        with socket.create_connection((parts.hostname, parts.port), timeout=1.0):
            return True
    except OSError:
        return False


@pytest.fixture
def stop_gateways(cli: Cli) -> Any:
    """A failed test must not leave a gateway running: destroy what is left, then stop any gateway pid seen."""
    pids: list[int] = []
    yield pids
    cli("destroy", "--all", "--yes", timeout=120)
    import signal

    for pid in pids:
        try:
            if b"gateway_guard" in Path(f"/proc/{pid}/cmdline").read_bytes():
                os.killpg(pid, signal.SIGKILL)
        except OSError:
            pass


def test_two_replicas_one_endpoint_survive_a_loss_scale_and_destroy(cli: Cli, sandbox: Any, cli_env: dict[str, str],
                                                                    stop_gateways: list[int]) -> None:
    box = sandbox()
    up = cli("up", "--profile", "4x3090", "--replicas", "2", "--sandbox", "--yes", "--json", "--ttl", LONG_TTL,
             timeout=300)
    evs = events(up.stdout)
    assert up.returncode == 0, up.stderr
    assert evs[-1]["event"] == "ready", evs[-3:]
    group = evs[-1]["deployment"]
    name = group["name"]
    # Registration comes only after each replica's own checks (its smoke ran, then it was registered).
    notes = [e["message"] for e in evs if e["event"] == "note"]
    for i in (0, 1):
        assert notes.index(f"replica {i}: checks passed; registered with the gateway") > 0
    smoke_done = [n for n, e in enumerate(evs) if e.get("event") == "phase" and e.get("phase") == "done"]
    registered = [n for n, e in enumerate(evs) if "registered with the gateway" in str(e.get("message"))]
    assert len(smoke_done) == 2 and smoke_done[0] < registered[0] and smoke_done[1] < registered[1]

    status = _status(cli, name)
    replicas = status["replicas"]
    assert [r["index"] for r in replicas] == [0, 1]
    assert all(r["status"] == "ready" and r["healthy"] for r in replicas)
    assert len({r["instance_id"] for r in replicas}) == 2
    gw = status["gateway"]
    stop_gateways.append(gw["pid"])
    assert gw["alive"] and gw["policy"] == "round_robin" and gw["pid"] > 0
    assert gw["url"].startswith("http://127.0.0.1:")
    running = {i["id"]: i for i in box.running()}
    assert len({running[r["instance_id"]]["machine_id"] for r in replicas}) == 2, "replicas share a machine"
    # The sandbox's two best 4x3090 machines belong to one host (catalogue._share_a_host): replica 1 went to
    # the third machine, another host's, rather than next to replica 0.
    assert len({running[r["instance_id"]]["host_id"] for r in replicas}) == 2, "replicas share a host"
    assert not [n for n in notes if n.startswith("warning:")], notes

    env = _env(cli, name)
    assert env["OPENAI_BASE_URL"] == gw["url"] + "/v1"
    gateway_key = env["OPENAI_API_KEY"]
    # Keys: a replica refuses the gateway's key; it takes its own, which clients never see.
    r0 = _env(cli, replicas[0]["name"])
    assert r0["OPENAI_API_KEY"] != gateway_key
    # Each replica is its own https endpoint, trusted through its own pinned certificate (env's bundle).
    assert replicas[0]["endpoint"].startswith("https://") and r0["SSL_CERT_FILE"]
    pinned = ssl.create_default_context(cafile=r0["SSL_CERT_FILE"])
    refused = httpx.post(replicas[0]["endpoint"] + "/chat/completions", timeout=10, verify=pinned,
                         headers={"Authorization": f"Bearer {gateway_key}"},
                         json={"model": env["MODEL"], "messages": [{"role": "user", "content": "hi"}]})
    assert refused.status_code == 401
    assert httpx.get(replicas[0]["endpoint"] + "/models", timeout=10, verify=pinned,
                     headers={"Authorization": f"Bearer {r0['OPENAI_API_KEY']}"}).status_code == 200
    # The gateway refuses anything but its own key, a replica's included.
    assert httpx.get(gw["url"] + "/v1/models", timeout=10,
                     headers={"Authorization": f"Bearer {r0['OPENAI_API_KEY']}"}).status_code == 401

    before = {r["name"]: _served(cli, r["name"]) for r in replicas}
    assert _chats(env["OPENAI_BASE_URL"], gateway_key, env["MODEL"], 20) == 20
    after = {r["name"]: _served(cli, r["name"]) for r in replicas}
    spread = {k: after[k] - before[k] for k in after}
    assert all(v > 0 for v in spread.values()) and sum(spread.values()) >= 20, spread

    # bench and smoke work against the gateway unchanged; bench reads per-replica counts from SMG's metrics.
    bench = cli("bench", name, "--num-prompts", "6", "--input-len", "8", "--output-len", "4", "--json", timeout=120)
    assert bench.returncode == 0, bench.stderr
    per_replica = json.loads(bench.stdout)["per_replica"]
    assert sorted(per_replica) == sorted(r["name"] for r in replicas)
    assert sum(per_replica.values()) == 6 and all(v > 0 for v in per_replica.values()), per_replica
    cli("smoke", name, check_exit=0, timeout=120)

    # Lose replica 0 out of band, with the official vastai CLI.
    vastai = subprocess.run(
        [str(VASTAI), "--url", box.url, "--api-key", box.api_key, "--retry", "1", "destroy", "instance",
         str(replicas[0]["instance_id"]), "-y"],
        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
        env=dict(os.environ, VASTAI_NO_UPDATE_CHECK="1", NO_COLOR="1"),
    )
    assert vastai.returncode == 0, vastai.stdout + vastai.stderr
    assert _chats(env["OPENAI_BASE_URL"], gateway_key, env["MODEL"], 20) == 20
    def replica0_lost() -> dict[str, Any] | None:
        seen = _status(cli, name)
        return seen if seen["replicas"][0]["status"] == "lost" else None

    lost = wait_until(replica0_lost, "status marks replica 0 lost")
    assert lost["replicas"][1]["healthy"] and not lost["replicas"][0]["healthy"]
    listed = json.loads(cli("list", "--json", check_exit=0).stdout)["deployments"]
    row = next(d for d in listed if d["name"] == name)
    assert row["replicas_healthy"] == 1 and row["replicas_lost"] == 1
    # list's $/h for a group is the total of its live replicas: the lost one bills nothing.
    assert row["dph_total"] == pytest.approx(replicas[1]["dph_total"], abs=1e-4)

    scaled = cli("scale", name, "--replicas", "2", "--ttl", LONG_TTL, "--json", timeout=300)
    assert scaled.returncode == 0, scaled.stderr
    # scale shows the same live progress as up: progress events from the same Deployer, same fields.
    progress = [e for e in events(scaled.stdout) if e["event"] == "progress"]
    assert progress and all({"phase", "elapsed_s", "phase_elapsed_s", "dph_total", "expires_at"} <= set(e)
                            for e in progress), progress[:2]
    restored_status = _status(cli, name)
    restored = restored_status["replicas"]
    assert restored_status["dph_total"] == pytest.approx(sum(r["dph_total"] for r in restored), abs=1e-4)
    assert [r["status"] for r in restored] == ["ready", "ready"] and all(r["healthy"] for r in restored)
    assert [r["index"] for r in restored] == [1, 2]
    assert _chats(env["OPENAI_BASE_URL"], gateway_key, env["MODEL"], 4) == 4

    # Secrets: the gateway's log is owner-only and holds no key; --json never prints the gateway key.
    log = Path(cli_env["GLMDEPLOY_HOME"]) / f"gateway-{group['id']}.log"
    assert log.exists() and log.stat().st_mode & 0o777 == 0o600
    assert gateway_key not in log.read_text() and r0["OPENAI_API_KEY"] not in log.read_text()
    assert gateway_key not in json.dumps(_status(cli, name)) + up.stdout + scaled.stdout

    destroyed = cli("destroy", name, "--yes", "--json", timeout=120)
    assert destroyed.returncode == 0, destroyed.stderr
    assert box.running() == []
    assert not _port_open(gw["url"])
    assert not Path(f"/proc/{gw['pid']}").exists() or b"gateway_guard" not in Path(
        f"/proc/{gw['pid']}/cmdline").read_bytes()


def test_bad_input_rents_nothing(cli: Cli, sandbox: Any) -> None:
    box = sandbox()
    zero = cli("up", "--profile", "4x3090", "--replicas", "0", "--sandbox", "--yes")
    assert zero.returncode == 2
    negative = cli("up", "--profile", "4x3090", "--replicas", "-1", "--sandbox", "--yes")
    assert negative.returncode == 2

    too_many = cli("up", "--profile", "4x3090", "--replicas", "60", "--sandbox", "--yes", "--ttl", LONG_TTL)
    assert too_many.returncode == 3, too_many.stderr
    line = [x for x in too_many.stderr.splitlines() if x.startswith("error:")]
    assert len(line) == 1 and "matching offer(s)" in line[0] and "nothing was rented" in line[0]
    assert "Traceback" not in too_many.stderr

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        busy = cli("up", "--profile", "4x3090", "--replicas", "2", "--sandbox", "--yes", "--gateway-port",
                   str(port), "--ttl", LONG_TTL)
    assert busy.returncode == 2
    errors = [x for x in busy.stderr.splitlines() if x.startswith("error:")]
    assert len(errors) == 1 and f"127.0.0.1:{port}" in errors[0] and "Traceback" not in busy.stderr
    assert errors[0].startswith(f"error: the gateway port 127.0.0.1:{port} is taken"), errors
    assert "nothing was rented" in errors[0]
    assert box.ledger()["instances"] == []
