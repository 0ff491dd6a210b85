"""Issue 12 §4: TTL, ``ci`` and SIGINT/SIGTERM/SIGHUP cover all replicas (real smg, sandbox).

- ``ci --replicas 2`` rents both replicas through the verified path in CI's owner scope, smokes the
  gateway, writes one JUnit case per replica's readiness, and its one teardown destroys every replica
  and stops the gateway;
- SIGTERM while ``ci --replicas 2`` rents replica 1 leaves nothing running and no gateway;
- ``ci --replicas 2 --max-cost`` counts every replica that bills, and its teardown leaves nothing;
- the TTL watchdog is armed on every replica, a replacement rented by ``scale`` included, and once it
  expires every replica instance is gone (``destroyed_by: watchdog``), and ``status`` closes the group
  and stops its gateway.
"""

from __future__ import annotations

import json
import signal
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from waits import LONG_TIMEOUT, EventStream, wait_exit, wait_until

from .conftest import GLMDEPLOY, LONG_TTL, events
from .test_replica_faults import _gateway_pids, _needs_smg, _port_open, _second_wait_running, no_gateway_left

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
__all__ = ["_needs_smg", "no_gateway_left"]  # fixtures, used by name


def test_ci_with_two_replicas_passes_reports_each_replica_and_destroys_them_all(
        cli: Any, cli_env: dict[str, str], sandbox: Any, tmp_path: Path, isolated_env: Path,
        no_gateway_left: None) -> None:
    box = sandbox()
    report = tmp_path / "ci.xml"
    proc = cli("ci", "-p", "4x3090", "--replicas", "2", "--sandbox", "--ttl", LONG_TTL, "--json", "--junit",
               str(report), timeout=300)
    assert proc.returncode == 0, proc.stderr
    outcome = json.loads(proc.stdout.splitlines()[-1])
    assert outcome["event"] == "ci" and outcome["passed"] is True, outcome
    assert [r["index"] for r in outcome["replicas"]] == [0, 1]
    gateway_url = outcome["deployment"]["gateway_url"]
    assert gateway_url.startswith("http://127.0.0.1:") and outcome["deployment"]["endpoint"] == gateway_url + "/v1"
    # Each replica went through up's verified path (its smoke) and was registered only after it.
    notes = [e["message"] for e in events(proc.stdout) if e["event"] == "note"]
    assert "replica 0: checks passed; registered with the gateway" in notes
    assert "replica 1: checks passed; registered with the gateway" in notes
    cases = [c.get("name") for c in ET.parse(report).getroot().iter("testcase")
             if c.get("classname") == "glmdeploy.ci"]
    assert cases == ["deploy replica 0", "deploy replica 1", "deploy", "smoke", "destroy"], cases
    assert ET.parse(report).getroot().get("failures") == "0"
    # CI's own owner scope, a replica index on each label, every watchdog armed; all destroyed by ci itself.
    owner = (isolated_env / "owner-id").read_text().strip()
    instances = box.ledger()["instances"]
    assert len(instances) == 2 and box.running() == []
    assert all(i["label"].startswith(f"glmdeploy:{owner}-ci:") for i in instances)
    assert sorted(i["label"][-3:] for i in instances) == ["-r0", "-r1"]
    assert all(i["ttl_s"] and i["destroyed_by"] == "api" for i in instances), instances
    assert not _port_open(gateway_url) and _gateway_pids(cli_env["GLMDEPLOY_HOME"]) == []
    listed = json.loads(cli("list", "--all", "--json", check_exit=0).stdout)["deployments"]
    assert listed and all(d["destroyed_at"] for d in listed)


def test_sigterm_while_ci_rents_replica_1_leaves_nothing(cli_env: dict[str, str], sandbox: Any,
                                                        no_gateway_left: None) -> None:
    box = sandbox()
    proc = subprocess.Popen([*GLMDEPLOY, "ci", "-p", "4x3090", "--replicas", "2", "--sandbox", "--json", "--ttl",
                             LONG_TTL], env=cli_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            stdin=subprocess.DEVNULL)
    stream = EventStream(proc)
    try:
        assert _second_wait_running(stream), stream.seen
        assert len(box.running()) == 2  # replica 0 ready and registered, replica 1 rented
        proc.send_signal(signal.SIGTERM)
        code = wait_exit(proc, timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert code == 130
    seen = stream.drain()
    assert seen[-1]["event"] == "ci" and seen[-1]["passed"] is False
    assert any("gateway stopped" in str(e.get("message")) for e in seen), seen
    assert box.running() == []


def test_ci_max_cost_counts_the_whole_group_and_tears_it_down(cli: Any, sandbox: Any,
                                                              no_gateway_left: None) -> None:
    # Replica 0 comes up and keeps billing; replica 1 stays loading, so only the cost limit ends the job.
    box = sandbox(faults="stuck_loading=1,skip=1")
    proc = cli("ci", "-p", "4x3090", "--replicas", "2", "--sandbox", "--json", "--ttl", LONG_TTL, *LONG_TIMEOUT,
               "--max-cost", "2", timeout=300)
    assert proc.returncode == 4, proc.stderr
    outcome = json.loads(proc.stdout.splitlines()[-1])
    assert "cost limit reached" in outcome["error"] and outcome["cost"] >= 2, outcome
    instances = box.ledger()["instances"]
    assert len(instances) == 2 and box.running() == []
    # The rate the limit counted is both replicas' together, not the one rented last.
    both = sum(i["dph_total"] for i in instances)
    assert f"${both:.3f}/h" in outcome["error"], (outcome["error"], [i["dph_total"] for i in instances])
    assert any("gateway stopped" in str(e.get("message")) for e in events(proc.stdout))


# The sandbox's clock at 0.001: an 8 h TTL is 28.8 real seconds, far more than `up --replicas 2 --no-smoke`
# and `scale` need here, yet a wait the test can afford (it only polls the ledger meanwhile).
TTL_SCALE = 0.001
SHORT_TTL = "8h"


def test_the_ttl_watchdog_ends_every_replica_scales_replacement_included(cli: Any, cli_env: dict[str, str],
                                                                         sandbox: Any, no_gateway_left: None) -> None:
    box = sandbox(time_scale=TTL_SCALE)
    up = cli("up", "-p", "4x3090", "--replicas", "2", "--sandbox", "--yes", "--no-smoke", "--json", "--ttl",
             SHORT_TTL, timeout=300)
    assert up.returncode == 0, up.stderr
    group = events(up.stdout)[-1]["deployment"]
    assert group["expires_at"] is not None
    scaled = cli("scale", group["name"], "--replicas", "3", "--ttl", SHORT_TTL, "--json", timeout=300)
    assert scaled.returncode == 0, scaled.stderr
    instances = box.ledger()["instances"]
    assert len(instances) == 3 and all(i["ttl_s"] == 8 * 3600 for i in instances), instances

    def all_gone() -> list[dict[str, Any]] | None:
        rows: list[dict[str, Any]] = box.ledger()["instances"]
        return rows if all(r["status"] == "destroyed" for r in rows) else None

    gone = wait_until(all_gone, "every replica's TTL watchdog to fire", timeout=180, interval=0.2)
    assert [r["destroyed_by"] for r in gone] == ["watchdog"] * 3, gone
    # The TTL ended every replica, so it ended the group: the next look closes it and stops the gateway.
    assert _port_open(group["gateway_url"])
    shown = cli("status", group["name"], "--json", check_exit=0)
    status = json.loads(shown.stdout)
    assert status["status"] == "destroyed" and "TTL expired" in status["error"], status
    assert status["gateway"]["alive"] is False and "gateway stopped" in shown.stderr
    assert box.running() == [] and not _port_open(group["gateway_url"])
    assert _gateway_pids(cli_env["GLMDEPLOY_HOME"]) == []
