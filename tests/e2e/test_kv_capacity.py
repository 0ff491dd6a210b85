"""Issue 11 §5 end to end: `up` stores the engine's own KV capacity next to the plan; `status` shows
planned vs reported, with a note when they differ by more than 2%.

The sandbox's simulated engines size their pool with the planner's engine formulas for the rented
GPU, moved by a deviation of up to ±4% drawn from the engine's seed (the sandbox seed plus the
instance id), so each run checks the comparison against an independently known deviation.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Callable

import pytest

from glmdeploy.engines import get_engine
from glmdeploy.sandbox.engines.config import kv_deviation

from .conftest import LONG_TTL, Sandbox

Cli = Callable[..., subprocess.CompletedProcess[str]]
StartSandbox = Callable[..., Sandbox]

pytestmark = pytest.mark.e2e


# With today's instance ids, seed 0 lands 0.55% off the plan (no note) and seed 2 3.68% under it
# (a note); the assertions hold for any seed, the choice only makes both branches run.
@pytest.mark.parametrize(("profile", "seed"), [("2x5090-nvfp4", 0), ("4x3090", 2)])
def test_up_records_reported_kv_and_status_compares_it_with_the_plan(
    cli: Cli, sandbox: StartSandbox, profile: str, seed: int
) -> None:
    sb = sandbox(seed=seed)
    plan = json.loads(cli("plan", "--profile", profile, "--json", check_exit=0).stdout)
    # The default TTL (readiness timeout + 30m) is seconds of real time on the sandbox's fast clock: its
    # watchdog would destroy the instance before `logs` runs.
    up = cli("up", "--profile", profile, "--sandbox", "--yes", "--ttl", LONG_TTL, timeout=120, check_exit=0)
    status = json.loads(cli("status", "--json", check_exit=0).stdout)
    kv = status["kv_capacity"]
    assert f"KV pool:  planned {kv['planned']:,}" in up.stdout
    assert kv["planned"] == plan["kv_pool_tokens"]
    assert (kv["planned_low"], kv["planned_high"]) == (
        plan["uncertainty"]["kv_pool_tokens_low"],
        plan["uncertainty"]["kv_pool_tokens_high"],
    )
    # What `up` stored is the number the engine printed in its own capacity line.
    logs = cli("logs", check_exit=0).stdout
    engine = get_engine(plan["engine"])
    printed = [engine.parse_kv_tokens(line) for line in logs.splitlines()]
    assert kv["reported"] in [n for n in printed if n is not None]
    # ... and it is the plan moved by the engine's seeded deviation.
    expected = kv_deviation(seed + status["instance_id"]) * 100
    assert kv["deviation_percent"] == pytest.approx(expected, abs=0.05)
    text = cli("status", check_exit=0).stdout
    assert re.search(rf"KV pool:  planned {kv['planned']:,} .* vs reported {kv['reported']:,} ", text)
    if abs(expected) > 2:
        assert kv["note"] and "calibration point" in kv["note"]
        assert "note:     the engine reported" in text
    else:
        assert kv["note"] is None
        assert "note:" not in text
    cli("destroy", "--yes", check_exit=0)
    assert sb.running() == []
