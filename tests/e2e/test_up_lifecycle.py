"""Issue 4 acceptance: `up` and the commands that manage a deployment, end to end on the sandbox.

Every test ends by reading the sandbox's ledger: whatever happened, nothing may be left running.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from waits import FAULTHANDLER_ENV, LONG_TIMEOUT, EventStream, default_sigint, wait_exit, wait_for_request

from .conftest import GLMDEPLOY, LONG_TTL, Sandbox, events

Cli = Callable[..., subprocess.CompletedProcess[str]]
StartSandbox = Callable[..., Sandbox]

pytestmark = pytest.mark.e2e


def env_exports(cli: Cli, name: str | None = None) -> dict[str, str]:
    out = cli("env", *([name] if name else []), check_exit=0).stdout
    pairs = {}
    for line in out.splitlines():
        assert line.startswith("export ")
        key, _, value = line.removeprefix("export ").partition("=")
        pairs[key] = value.strip("'")
    return pairs


@pytest.mark.parametrize(("profile", "engine"), [("4x3090", "sglang"), ("h200", "lightllm"), ("2x5090", "vllm")])
def test_up_reaches_ready_env_works_and_destroy_leaves_nothing(
    cli: Cli, cli_env: dict[str, str], sandbox: StartSandbox, profile: str, engine: str, tmp_path: Path
) -> None:
    sb = sandbox()
    up = cli("up", "--profile", profile, "--sandbox", "--yes", "--ttl", LONG_TTL, check_exit=0)
    assert "ready:" in up.stdout
    exports = env_exports(cli)
    base, key, model = exports["OPENAI_BASE_URL"], exports["OPENAI_API_KEY"], exports["MODEL"]
    assert base.startswith("https://127.0.0.1:") and base.endswith("/v1") and len(key) == 64
    bundle = exports["SSL_CERT_FILE"]
    assert exports["REQUESTS_CA_BUNDLE"] == exports["CURL_CA_BUNDLE"] == bundle
    assert os.stat(bundle).st_mode & 0o777 == 0o644 and key not in open(bundle).read()
    # After eval "$(glmdeploy env)", the OpenAI SDK and curl verify the endpoint with no extra options.
    shell_env = {k: v for k, v in cli_env.items() if k not in ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")}
    sdk = (
        "import os, openai; c = openai.OpenAI(); "
        "r = c.chat.completions.create(model=os.environ['MODEL'], messages=[{'role': 'user', 'content': 'hi'}], "
        "max_tokens=16); print('finish', r.choices[0].finish_reason)"
    )
    glm = " ".join(shlex.quote(a) for a in GLMDEPLOY)
    script = (
        f'eval "$({glm} env)" && {shlex.quote(sys.executable)} -c {shlex.quote(sdk)} && '
        'curl -sS --fail -H "Authorization: Bearer $OPENAI_API_KEY" "$OPENAI_BASE_URL/models" && echo && '
        'curl -sS -o /dev/null -w "%{http_code}\\n" "$OPENAI_BASE_URL/models"'
    )
    out = subprocess.run(["bash", "-c", script], env=shell_env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] in ("finish stop", "finish length")
    assert json.loads(lines[1])["data"][0]["id"] == model
    # Unauthenticated requests are refused, whatever the engine (every engine is behind the nginx proxy).
    assert lines[2] == "401"
    # bench --report on the deployment (issue 13 §8): one HTML file with the run's engine and profile, no key.
    report = tmp_path / "bench.html"
    bench = cli("bench", "--num-prompts", "4", "--input-len", "8", "--output-len", "4", "--max-concurrency", "2",
                "--report", str(report), check_exit=0)
    assert "Serving Benchmark Result" in bench.stdout and f"report: {report}" in bench.stderr
    page = report.read_text()
    assert page.count('<svg class="chart') == 6 and key not in page
    for setting in (f"<th>engine</th><td>{engine}</td>", f"<th>profile</th><td>{profile}</td>",
                    f"<th>model</th><td>{model}</td>", "<th>requests</th><td>4</td>"):
        assert setting in page
    assert len(sb.running()) == 1
    cli("destroy", "--yes", check_exit=0)
    assert sb.running() == []
    listed = json.loads(cli("list", "--json", check_exit=0).stdout)
    assert [d["status"] for d in listed["deployments"]] == ["destroyed"]


def test_up_json_emits_phase_events_and_ends_with_the_deployment(cli: Cli, sandbox: StartSandbox) -> None:
    sb = sandbox()
    up = cli("up", "-p", "4x3090", "--sandbox", "--ttl", LONG_TTL, "--yes", "--json", "--name", "ci-run", check_exit=0)
    evs = events(up.stdout)
    phases = [e["phase"] for e in evs if e["event"] == "phase"]
    assert phases == [
        "plan_check", "search", "rank", "confirm", "create", "wait_running", "wait_ready",
        "resolve_endpoint", "smoke", "done",
    ]
    assert all(isinstance(e["elapsed_s"], float | int) for e in evs if e["event"] == "phase")
    last = evs[-1]
    assert last["event"] == "ready"
    d = last["deployment"]
    for key in ("name", "profile", "instance_id", "status", "endpoint", "model", "dph_total", "created_at",
                "machine_id"):
        assert key in d
    assert d["name"] == "ci-run" and d["status"] == "ready" and d["endpoint"].endswith("/v1")
    key = env_exports(cli, "ci-run")["OPENAI_API_KEY"]
    assert key not in up.stdout and key not in up.stderr
    cli("destroy", "ci-run", "--yes", check_exit=0)
    assert sb.running() == []


@pytest.mark.parametrize(
    ("faults", "extra", "phase", "needle"),
    [
        # Failures of their own, not the timeout's: it must not be able to fire first on a busy box.
        ("engine_oom", list(LONG_TIMEOUT), "wait_ready", "cuda_oom"),
        ("exited=1", list(LONG_TIMEOUT), "wait_running", "exited"),
        ("ports_null", ["--timeout", "10m"], "wait_ready", "no_ports: instance"),
        ("stuck_loading", ["--timeout", "10m"], "wait_running", "still 'loading'"),
    ],
)
def test_failures_destroy_the_instance_and_exit_4(
    cli: Cli, sandbox: StartSandbox, faults: str, extra: list[str], phase: str, needle: str
) -> None:
    sb = sandbox(faults=faults)
    up = cli("up", "-p", "2x5090", "--sandbox", "--yes", "--json", *extra)
    assert up.returncode == 4, up.stderr
    last = events(up.stdout)[-1]
    assert last["event"] == "failed" and last["phase"] == phase
    assert needle in last["error"]
    error_lines = [line for line in up.stderr.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1
    # The engine's own traceback may be quoted in the log excerpt ("  | "), never one of glmdeploy's.
    ours = [line for line in up.stderr.splitlines() if not line.startswith("  | ")]
    assert not any("Traceback" in line for line in ours)
    assert sb.ledger()["instances"], "an instance was rented"
    assert sb.running() == []
    listed = json.loads(cli("list", "--json", check_exit=0).stdout)["deployments"]
    assert [d["status"] for d in listed] == ["failed"]


def test_keep_on_failure_keeps_the_instance_and_says_how_to_destroy_it(cli: Cli, sandbox: StartSandbox) -> None:
    sb = sandbox(faults="engine_oom")
    up = cli("up", "-p", "2x5090", "--sandbox", "--yes", "--keep-on-failure")
    assert up.returncode == 4
    assert "glmdeploy destroy" in up.stderr
    assert len(sb.running()) == 1
    cli("destroy", "--yes", check_exit=0)
    assert sb.running() == []


def test_max_attempts_moves_to_another_machine(cli: Cli, sandbox: StartSandbox) -> None:
    sb = sandbox(faults="exited=1")
    up = cli("up", "-p", "4x3090", "--sandbox", "--ttl", LONG_TTL, "--yes", "--json", "--max-attempts", "3",
             check_exit=0)
    evs = events(up.stdout)
    assert evs[-1]["event"] == "ready"
    rented = sb.ledger()["instances"]
    assert len(rented) == 2
    assert rented[0]["machine_id"] != rented[1]["machine_id"]
    assert [i["status"] for i in rented].count("destroyed") == 1
    cli("destroy", "--yes", check_exit=0)
    assert sb.running() == []


def _start_up(cli_env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*GLMDEPLOY, "up", "--sandbox", "--yes", "--json", "--ttl", LONG_TTL, *args],
        env=cli_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        preexec_fn=default_sigint,  # Ctrl-C reaches it even when this test run was started in the background
    )


def _sandbox_requests(sb: Sandbox) -> dict[str, Any]:
    r = httpx.get(sb.url + "/_sandbox/requests", timeout=10)
    r.raise_for_status()
    body: dict[str, Any] = r.json()
    return body


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupt_during_wait_ready_destroys_and_exits_130(
    cli: Cli, cli_env: dict[str, str], sandbox: StartSandbox, sig: signal.Signals
) -> None:
    sb = sandbox(faults="never_ready")
    # The profile's 40 min readiness timeout is 4.8 real seconds here: it must not be able to fire
    # before the signal does, however slowly this test gets to send it.
    proc = _start_up({**cli_env, **FAULTHANDLER_ENV}, "-p", "4x3090", *LONG_TIMEOUT)
    stream = EventStream(proc)
    stream.expect_phase("wait_ready")
    # Inside the readiness loop: the engine's logs have been asked for at least once.
    wait_for_request(lambda: _sandbox_requests(sb), "PUT", "/request_logs/")
    proc.send_signal(sig)
    assert wait_exit(proc) == 130, proc.stderr.read() if proc.stderr else ""
    assert stream.drain()[-1]["event"] == "failed"
    assert proc.stderr is not None
    stderr = proc.stderr.read()
    # docs/troubleshooting.md's row, word for word.
    assert "error: interrupted: whatever was rented has been destroyed" in stderr.splitlines(), stderr
    assert sb.running() == []
    assert json.loads(cli("list", "--json", check_exit=0).stdout)["orphans"] == []


def test_kill_9_leaves_an_orphan_that_destroy_orphans_removes(
    cli: Cli, cli_env: dict[str, str], sandbox: StartSandbox
) -> None:
    sb = sandbox(faults="never_ready")
    proc = _start_up(cli_env, "-p", "4x3090", *LONG_TIMEOUT)  # no readiness timeout before the kill
    EventStream(proc).expect_phase("wait_ready")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    assert len(sb.running()) == 1
    listed = cli("list", "--json", check_exit=0)
    orphans = json.loads(listed.stdout)["orphans"]
    assert len(orphans) == 1 and "died" in orphans[0]["reason"]
    human = cli("list", check_exit=0)
    assert "orphan: instance" in human.stderr and "destroy --orphans" in human.stderr
    cli("destroy", "--orphans", "--yes", check_exit=0)
    assert sb.running() == []
    final = json.loads(cli("list", "--json", check_exit=0).stdout)
    assert final["orphans"] == [] and [d["status"] for d in final["deployments"]] == ["destroyed"]


def test_two_concurrent_ups_share_one_state_db(cli: Cli, cli_env: dict[str, str], sandbox: StartSandbox) -> None:
    sb = sandbox()
    # Two deployments at once on a busy box: neither may time out because the other took the CPU.
    procs = [_start_up(cli_env, "-p", p, *LONG_TIMEOUT) for p in ("4x3090", "2x5090")]
    outs = [p.communicate(timeout=90) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1] for o in outs]
    listed = json.loads(cli("list", "--json", check_exit=0).stdout)["deployments"]
    assert sorted(d["profile"] for d in listed) == ["2x5090", "4x3090"]
    assert all(d["status"] == "ready" and d["instance_id"] for d in listed)
    assert len({d["instance_id"] for d in listed}) == 2
    cli("destroy", "--all", "--yes", check_exit=0)
    assert sb.running() == []


def test_ttl_watchdog_destroys_the_instance_from_inside(cli: Cli, sandbox: StartSandbox) -> None:
    """Run the watchdog snippet the onstart carries, with the instance's own key, against the sandbox."""
    from glmdeploy.onstart import watchdog_snippet

    sb = sandbox()
    up = cli("up", "-p", "4x3090", "--sandbox", "--yes", "--json", "--ttl", "2h", check_exit=0)
    d = events(up.stdout)[-1]["deployment"]
    assert d["expires_at"] is not None
    instance = httpx.get(
        f"{sb.url}/api/v0/instances/{d['instance_id']}/", headers={"Authorization": f"Bearer {sb.api_key}"}, timeout=10
    ).json()["instances"]
    onstart = instance["onstart"]
    assert "glmdeploy_watchdog" in onstart and "sleep 7200" in onstart
    container_key = _instance_key(sb, d["instance_id"])
    script = watchdog_snippet(1) + "\nwait\n"
    env = {"PATH": os.environ["PATH"], "CONTAINER_ID": str(d["instance_id"]), "CONTAINER_API_KEY": container_key,
           "GLMDEPLOY_VAST_URL": sb.url}
    subprocess.run(["bash", "-c", script], env=env, timeout=60, check=True)
    assert sb.running() == []
    status = json.loads(cli("list", "--json", check_exit=0).stdout)["deployments"]
    assert [x["status"] for x in status] == ["destroyed"]


def _instance_key(sb: Sandbox, instance_id: int) -> str:
    r = httpx.get(f"{sb.url}/_sandbox/instances/{instance_id}/container-env",
                  headers={"Authorization": f"Bearer {sb.api_key}"}, timeout=10)
    r.raise_for_status()
    key: str = r.json()["env"]["CONTAINER_API_KEY"]
    return key


@pytest.mark.parametrize(
    "faults",
    [
        "create_timeout=1",  # created server-side, answer lost: found by label, not rented twice
        "offer_taken=1",  # someone else rented it between search and create: next offer
        "http429:create=2,retry_after=1;http5xx:show=2;drop:logs=1",  # the client waits these out
        "logs_pending=2;empty_logs=3",  # logs slow to appear are "not yet", not failure
    ],
)
def test_up_survives_api_trouble_without_renting_twice(cli: Cli, sandbox: StartSandbox, faults: str) -> None:
    sb = sandbox(faults=faults)
    up = cli("up", "-p", "4x3090", "--sandbox", "--ttl", LONG_TTL, "--yes", "--json", check_exit=0)
    assert events(up.stdout)[-1]["event"] == "ready"
    ledger = sb.ledger()
    assert len(ledger["instances"]) == 1, ledger
    cli("destroy", "--yes", check_exit=0)
    assert sb.running() == []
