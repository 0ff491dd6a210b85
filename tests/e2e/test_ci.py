"""Issue 5 §3: `glmdeploy ci` deploys, smokes, optionally benchmarks, and always destroys."""

from __future__ import annotations

import json
import signal
import subprocess
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path

import pytest

from waits import FAULTHANDLER_ENV, LONG_TIMEOUT, EventStream, wait_exit

from .conftest import GLMDEPLOY, LONG_TTL, Sandbox

Cli = Callable[..., subprocess.CompletedProcess[str]]
StartSandbox = Callable[..., Sandbox]

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def last_json(stdout: str) -> dict[str, object]:
    outcome: dict[str, object] = json.loads(stdout.splitlines()[-1])
    return outcome


def test_ci_passes_reports_junit_and_destroys(
    cli: Cli, sandbox: StartSandbox, tmp_path: Path, isolated_env: Path
) -> None:
    sb = sandbox()
    report = tmp_path / "ci.xml"
    html = tmp_path / "bench.html"
    proc = cli("ci", "-p", "2x5090", "--sandbox", "--ttl", LONG_TTL, "--json", "--junit", str(report),
               "--bench", "--bench-prompts", "8", "--report", str(html))
    assert proc.returncode == 0, proc.stderr
    outcome = last_json(proc.stdout)
    assert outcome["event"] == "ci" and outcome["passed"] is True
    deployment = outcome["deployment"]
    assert isinstance(deployment, dict) and deployment["expires_at"]  # the host watchdog is armed
    # The final record is the one the teardown left, not the one `up` returned (issue 13 §8).
    assert deployment["status"] == "destroyed" and deployment["destroyed_at"]
    bench = outcome["bench"]
    assert isinstance(bench, dict) and bench["completed"] == 8 and "mean_ttft_ms" in bench
    # The figures and the cost, where the CI log shows them (stderr under --json).
    assert "Serving Benchmark Result" in proc.stderr and "Mean TTFT (ms):" in proc.stderr
    assert f"cost of the run: ${outcome['cost']:.4f}" in proc.stderr
    root = ET.parse(report).getroot()
    suites = {s.get("name"): s for s in root.iter("testsuite")}
    ci_suite = suites["glmdeploy.ci"]
    assert ci_suite[0].tag == "properties"  # JUnit: properties before the test cases
    props = {p.get("name"): p.get("value") for p in ci_suite.iter("property")}
    assert props["bench.requests_ok"] == "8" and props["bench.requests_failed"] == "0"
    assert float(props["bench.ttft_p50_ms"] or "") == pytest.approx(float(bench["median_ttft_ms"]), abs=0.001)
    assert float(props["bench.output_throughput_tok_s"] or "") > 0
    assert float(props["cost_usd"] or "") == pytest.approx(float(outcome["cost"]), abs=0.0001)
    page = html.read_text()
    assert page.count("<svg class=\"chart") == 6 and "2x5090" in page and "vllm" in page
    assert [c.get("name") for c in suites["glmdeploy.ci"].iter("testcase")] == ["deploy", "smoke", "bench", "destroy"]
    assert len(list(suites["glmdeploy.smoke"].iter("testcase"))) == 8
    assert root.get("failures") == "0"
    assert sb.running() == [] and len(sb.ledger()["instances"]) == 1
    # CI rents in its own owner scope, so a sweep scoped to CI never touches a person's instances.
    owner = (isolated_env / "owner-id").read_text().strip()
    assert sb.ledger()["instances"][0]["label"].startswith(f"glmdeploy:{owner}-ci:")
    listed = json.loads(cli("list", "--json", check_exit=0).stdout)["deployments"]
    assert [d["status"] for d in listed] == ["destroyed"]


def test_ci_tears_down_on_smoke_failure_with_exit_5(cli: Cli, sandbox: StartSandbox, tmp_path: Path) -> None:
    sb = sandbox(faults="broken_tool_parser")
    report = tmp_path / "ci.xml"
    proc = cli("ci", "-p", "2x5090", "--sandbox", "--ttl", LONG_TTL, "--json", "--junit", str(report))
    assert proc.returncode == 5, proc.stderr
    outcome = last_json(proc.stdout)
    assert outcome["passed"] is False and outcome["phase"] == "smoke"
    assert "tools" in str(outcome["error"])
    assert f"cost of the run: ${outcome['cost']:.4f}" in proc.stderr  # a failed run says what it cost too
    failed = [c.get("name") for c in ET.parse(report).getroot().iter("testcase") if c.find("failure") is not None]
    assert "tools" in failed and "smoke" in failed
    assert sb.running() == []


def test_ci_aborts_and_tears_down_when_the_cost_limit_is_reached(cli: Cli, sandbox: StartSandbox) -> None:
    # At time scale 0.002 a real second is 500 simulated seconds: ~$0.14 at ~$1/h.
    sb = sandbox(faults="never_ready")
    proc = cli("ci", "-p", "2x5090", "--sandbox", "--json", "--max-cost", "0.05")
    assert proc.returncode == 4, proc.stderr
    outcome = last_json(proc.stdout)
    assert "cost limit reached" in str(outcome["error"])
    assert sb.ledger()["instances"] and sb.running() == []


def test_ci_destroys_on_sigterm(cli: Cli, cli_env: dict[str, str], sandbox: StartSandbox) -> None:
    sb = sandbox(faults="never_ready")
    # The readiness timeout must not fire before the signal, however long this test takes to send it.
    proc = subprocess.Popen([*GLMDEPLOY, "ci", "-p", "4x3090", "--sandbox", "--ttl", LONG_TTL, "--json", *LONG_TIMEOUT],
                            env={**cli_env, **FAULTHANDLER_ENV},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
    stream = EventStream(proc)
    stream.expect_phase("wait_ready")  # rented, and waiting for the engine
    assert len(sb.running()) == 1
    proc.send_signal(signal.SIGTERM)
    assert wait_exit(proc) == 130, proc.stderr.read() if proc.stderr else ""
    assert stream.drain()[-1]["passed"] is False
    assert sb.running() == []
