"""Issue 9 item 5: a ready deployment whose engine dies is reported unhealthy, with the reason.

``engine_death=3``: ``up``'s own smoke sends two generations (chat, stream), so the third generation
request, the first after ``up``, finds the engine core dead. What follows is the engine's own death
sequence (sandbox/engines/death.py): vLLM answers 500 then exits within a second (recorded), SGLang
kills its process tree at once (source). Either way the port then refuses connections.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from .conftest import LONG_TTL, InProcess
from .test_fault_matrix import assert_one_line_reason

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize("profile", ["4x3090", "2x5090-nvfp4"])  # SGLang, vLLM
def test_status_smoke_and_list_report_a_dead_engine(in_process: Any, profile: str) -> None:
    w: InProcess = in_process(faults="engine_death=3")
    up = w.glm("up", "-p", profile, "--sandbox", "--ttl", LONG_TTL, "--yes", "--name", "dies")
    assert_one_line_reason(up, 0)

    # Before the death: healthy, and list has nothing to say about health.
    before = json.loads(w.glm("status", "dies", "--json").stdout)
    assert before["health"] == "healthy" and before["health_reason"] is None, before

    smoke = w.glm("smoke", "dies", "--json")
    assert_one_line_reason(smoke, 5)
    report = json.loads(smoke.stdout)
    assert report["health"] == "unhealthy", report
    assert "the engine exited" in report["health_reason"], report
    assert "unhealthy: the engine exited" in smoke.error_lines()[0], smoke.describe()
    chat = next(c for c in report["checks"] if c["name"] == "chat")
    assert chat["status"] == "failed", chat
    if profile == "2x5090-nvfp4":
        assert "500" in chat["detail"], chat  # vLLM 0.24: the next chat after the core died gets 500

    status = w.glm("status", "dies", "--json")
    assert_one_line_reason(status, 0)
    view = json.loads(status.stdout)
    assert view["status"] == "ready" and view["instance_status"] == "running", view  # it still bills
    assert view["health"] == "unhealthy" and "connection refused" in view["health_reason"], view
    human = w.glm("status", "dies")
    assert "unhealthy: the engine exited" in human.stdout, human.describe()

    listed = json.loads(w.glm("list", "--json").stdout)["deployments"]
    assert [(d["name"], d["health"]) for d in listed] == [("dies", "unhealthy")], listed
    table = w.glm("list")
    assert "unhealthy" in table.stdout, table.describe()

    assert_one_line_reason(w.glm("destroy", "dies", "--yes"), 0)
    assert [i for i in w.admin.ledger()["instances"] if i["status"] != "destroyed"] == []
