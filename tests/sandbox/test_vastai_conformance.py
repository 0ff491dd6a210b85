"""The official ``vastai`` CLI (1.9.1, a test dependency) works against the sandbox and shows what it holds."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

# Each vastai invocation costs ~1.5 s of interpreter start-up on this machine.
pytestmark = [pytest.mark.e2e, pytest.mark.slow]

VASTAI = Path(sys.executable).parent / "vastai"


def run_vastai(sandbox: Any, *args: str, api_key: str | None = None, check: bool = True,
               stderr: bool = False) -> str:
    env = dict(os.environ, VASTAI_NO_UPDATE_CHECK="1", NO_COLOR="1")
    argv = [str(VASTAI), "--url", sandbox.url, "--api-key", api_key or sandbox.api_key, "--retry", "1", *args]
    result = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=60, stdin=subprocess.DEVNULL)
    if check:
        assert result.returncode == 0, f"{args}: rc={result.returncode}\n{result.stdout}\n{result.stderr}"
    return result.stdout + (result.stderr if stderr else "")


def raw(sandbox: Any, *args: str) -> Any:
    return json.loads(run_vastai(sandbox, "--raw", *args))


@pytest.fixture(autouse=True)
def _needs_vastai() -> None:
    if not VASTAI.exists():
        pytest.skip("the vastai CLI (dev dependency vastai==1.9.1) is not installed")


def test_search_offers_matches_the_sandbox(sandbox: Any, vast: Any) -> None:
    offers = raw(sandbox, "search", "offers", "gpu_name=RTX_4090 num_gpus=1 reliability>0.9", "-o", "dph+",
                 "--limit", "5", "--storage", "40")
    expected = vast.search({"verified": {"eq": True}, "external": {"eq": False}, "rentable": {"eq": True},
                            "gpu_name": {"eq": "RTX 4090"}, "num_gpus": {"eq": 1}, "reliability": {"gt": 0.9},
                            "order": [["dph_total", "asc"]], "limit": 5, "allocated_storage": 40})
    assert offers and [o["id"] for o in offers] == [o["id"] for o in expected]
    assert [o["dph_total"] for o in offers] == [o["dph_total"] for o in expected]
    # The human table renders too (it formats every displayed field).
    table = run_vastai(sandbox, "search", "offers", "gpu_name=H200", "--limit", "3")
    assert str(vast.search({"gpu_name": {"eq": "H200"}, "verified": {"eq": True}, "external": {"eq": False},
                            "rentable": {"eq": True}, "limit": 3})[0]["id"]) in table


def test_create_show_logs_label_destroy(sandbox: Any, vast: Any) -> None:
    offer = vast.first_offer(gpu_name="A100 SXM4")
    created = run_vastai(sandbox, "create", "instance", str(offer["id"]), "--image", "vllm/vllm-openai:v0.11.0",
                         "--env", "-p 8000:8000 -e HF_HOME=/workspace/hf", "--disk", "60", "--ssh", "--direct",
                         "--label", "from-vastai", "--onstart-cmd", "echo started")
    assert "'success': True" in created
    (entry,) = vast.ledger()["instances"]
    instance_id = entry["id"]
    assert f"'new_contract': {instance_id}" in created
    assert entry["offer_id"] == offer["id"] and entry["label"] == "from-vastai"

    row = vast.wait_status(instance_id, "running")
    shown = raw(sandbox, "show", "instance", str(instance_id))
    assert shown["id"] == instance_id and shown["actual_status"] == "running"
    assert shown["extra_env"] == {"-p 8000:8000": "1", "HF_HOME": "/workspace/hf"}
    assert shown["ports"] == row["ports"] and shown["onstart"] == "echo started"
    assert shown["image_runtype"] == "ssh_direc ssh_proxy" and shown["disk_space"] == 60

    table = run_vastai(sandbox, "show", "instance", str(instance_id))
    assert str(instance_id) in table and "from-vastai" in table

    instance = sandbox.world.instances[instance_id]

    async def write() -> None:
        instance.container_log.extend(["INFO:     Started server process [1]", "", "Application startup complete."])

    sandbox.call(write())
    logs = run_vastai(sandbox, "logs", str(instance_id))
    assert "Started server process [1]" in logs and "Application startup complete." in logs
    tail = run_vastai(sandbox, "logs", str(instance_id), "--tail", "1")
    assert "Application startup complete." in tail and "Started server" not in tail

    run_vastai(sandbox, "label", "instance", str(instance_id), "relabelled")
    assert vast.show(instance_id)["label"] == "relabelled"

    out = run_vastai(sandbox, "destroy", "instance", str(instance_id), "-y")
    assert f"destroying instance {instance_id}" in out
    assert vast.show(instance_id) is None
    assert vast.ledger()["live"] == 0
    assert raw(sandbox, "show", "instance", str(instance_id)) == {"instances": None}
    paths = [(r["method"], r["path"]) for r in httpx.get(f"{sandbox.url}/_sandbox/requests").json()["requests"]]
    assert ("PUT", f"/api/v0/asks/{offer['id']}/") in paths
    assert ("GET", f"/api/v0/instances/{instance_id}/") in paths
    assert ("PUT", f"/api/v0/instances/request_logs/{instance_id}/") in paths
    assert ("DELETE", f"/api/v0/instances/{instance_id}/") in paths


def test_show_instances_follows_pagination(sandbox: Any, vast: Any) -> None:
    offers = vast.search({"rentable": {"eq": True}, "limit": 30, "order": [["dph_total", "asc"]]})
    ids = sorted(vast.create(o["id"], label="batch").json()["new_contract"] for o in offers[:27])
    listed = raw(sandbox, "show", "instances")
    assert [r["id"] for r in listed] == ids
    assert all(r["label"] == "batch" and isinstance(r["extra_env"], dict) for r in listed)
    quiet = run_vastai(sandbox, "show", "instances", "-q")
    assert [int(x) for x in quiet.split()] == ids
    table = run_vastai(sandbox, "show", "instances")
    assert "27 instances" in table
    requests = httpx.get(f"{sandbox.url}/_sandbox/requests").json()["requests"]
    assert any(r["path"] == "/api/v1/instances/" and "after_token=" in r["query"] for r in requests)
    assert not any(r["path"] == "/api/v0/instances/" for r in requests)


def test_wrong_key_is_reported_as_invalid_user_key(sandbox: Any) -> None:
    out = run_vastai(sandbox, "show", "instances", api_key="not-the-key", check=False, stderr=True)
    assert "401" in out and "Invalid user key" in out
