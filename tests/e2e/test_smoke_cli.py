"""Issue 5 §1 acceptance: `glmdeploy smoke` as a subprocess against deployments on the sandbox process.

`up --sandbox --yes` deploys each shipped profile's engine (SGLang, vLLM, LightLLM behind its nginx proxy),
then `smoke --json --junit` must pass, with the checks each profile rules out skipped and saying why.
Every test destroys what it rented and checks the sandbox's ledger.
"""

from __future__ import annotations

import json
import subprocess
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path

import pytest

from .conftest import LONG_TTL, Sandbox

Cli = Callable[..., subprocess.CompletedProcess[str]]
StartSandbox = Callable[..., Sandbox]

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

CHECKS = ["health", "auth", "models", "chat", "stream", "reasoning", "tools", "max_tokens"]
# A small real delay before the first token: the sandbox streams without one otherwise, and a stream
# whose chunks all land in one read is (rightly) not incremental.
LATENCY = "slow_first_token=0.05"


@pytest.mark.parametrize(
    ("profile", "skipped"),
    [("4x3090", {"reasoning", "tools"}), ("2x5090", set()), ("h200", set())],
)
def test_smoke_passes_on_each_engine_with_json_and_junit(
    cli: Cli, sandbox: StartSandbox, tmp_path: Path, profile: str, skipped: set[str]
) -> None:
    sb = sandbox(faults=LATENCY)
    cli("up", "--profile", profile, "--sandbox", "--yes", "--ttl", LONG_TTL, timeout=120, check_exit=0)
    try:
        junit = tmp_path / "smoke.xml"
        result = cli("smoke", "--json", "--junit", str(junit), timeout=120)
        assert result.returncode == 0, result.stdout + result.stderr
        data = json.loads(result.stdout)
        assert data["passed"] is True
        assert [c["name"] for c in data["checks"]] == CHECKS
        assert {c["name"] for c in data["checks"] if c["status"] == "skipped"} == skipped
        assert all(c["passed"] for c in data["checks"])
        for name in skipped:
            detail = next(c["detail"] for c in data["checks"] if c["name"] == name)
            assert detail.startswith(f"profile {profile} enables no ")

        root = ET.parse(junit).getroot()
        [suite] = root.findall("testsuite")
        assert suite.get("name") == "glmdeploy.smoke"
        assert (suite.get("tests"), suite.get("failures"), suite.get("skipped")) == ("8", "0", str(len(skipped)))
        cases = {c.get("name"): c for c in suite.findall("testcase")}
        assert list(cases) == CHECKS
        assert not list(root.iter("failure"))
        assert {n for n, c in cases.items() if c.find("skipped") is not None} == skipped
    finally:
        cli("destroy", "--yes", check_exit=0)
    assert sb.running() == []


def test_a_fault_fails_its_check_and_exits_5(cli: Cli, sandbox: StartSandbox, tmp_path: Path) -> None:
    """The engine in the sandbox drops [DONE]; the table goes to stdout, the reason to stderr."""
    sb = sandbox(faults=f"{LATENCY};no_done")
    cli("up", "--profile", "2x5090", "--sandbox", "--yes", "--no-smoke", "--ttl", LONG_TTL, timeout=120, check_exit=0)
    try:
        junit = tmp_path / "smoke.xml"
        table = cli("smoke", "--only", "health,stream", "--junit", str(junit), timeout=120)
        assert table.returncode == 5, table.stdout + table.stderr
        assert "FAIL" in table.stdout and "stream" in table.stdout
        assert "error: smoke checks failed: stream" in table.stderr
        failure = ET.parse(junit).getroot().find("testsuite/testcase[@name='stream']/failure")
        assert failure is not None and "without data: [DONE]" in (failure.get("message") or "")

        env = dict(line.removeprefix("export ").split("=", 1) for line in cli("env", check_exit=0).stdout.splitlines())
        by_url = cli("smoke", "--url", env["OPENAI_BASE_URL"], "--api-key", env["OPENAI_API_KEY"].strip("'"),
                     "--ca-cert", env["SSL_CERT_FILE"].strip("'"), "--only", "stream", "--json", timeout=120)
        assert by_url.returncode == 5
        assert json.loads(by_url.stdout)["checks"][0]["detail"].startswith("the stream ended without data: [DONE]")
    finally:
        cli("destroy", "--yes", check_exit=0)
    assert sb.running() == []
