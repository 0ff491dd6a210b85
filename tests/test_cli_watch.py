"""`status --watch` option checks (issue 13 item 6): bad values are one `error:` line and exit 2,
before any state is opened or anything is contacted."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from glmdeploy.cli import app

runner = CliRunner()


@pytest.mark.parametrize(("args", "says"), [
    (["--watch", "--interval", "0"], "--interval must be a number of seconds above 0"),
    (["--watch", "--interval", "-1"], "--interval must be a number of seconds above 0"),
    (["--watch", "--interval", "nan"], "--interval must be a number of seconds above 0"),
    (["--watch", "--interval", "inf"], "--interval must be a number of seconds above 0"),
    (["--watch", "--interval", "abc"], "--interval"),
    (["--watch", "--count", "0"], "--count must be at least 1"),
    (["--interval", "2"], "--interval and --count go with --watch"),
    (["--count", "3"], "--interval and --count go with --watch"),
])
def test_bad_watch_options_are_one_error_line_exit_2(isolated_env: Path, args: list[str], says: str) -> None:
    result = runner.invoke(app, ["status", *args])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and says in lines[0], result.output
    assert not (isolated_env / "state.db").exists()


def _sample(**changes: object) -> object:
    from datetime import UTC, datetime

    from glmdeploy.commands.watch import WatchSample

    base: dict[str, object] = dict(
        name="glm-a", at=datetime(2026, 12, 3, 10, 0, 5, tzinfo=UTC), status="ready", instance_status="running",
        health="healthy", uptime_s=3725, cost_so_far=1.234, dph_total=0.5, expires="in 2h",
        running=3, waiting=1, kv_cache_usage=0.4213)
    return WatchSample(**{**base, **changes})


def test_plain_line_carries_every_figure() -> None:
    from glmdeploy.commands.watch import line

    text = line(_sample())  # type: ignore[arg-type]
    assert text == ("10:00:05 glm-a: ready (running)  health healthy  up 1h02m  $1.23 at $0.500/h  "
                    "running 3  waiting 1  kv 42.1%")


def test_missing_figures_read_n_a_with_the_reason() -> None:
    from glmdeploy.commands.watch import line

    note = "SGLang serves /metrics only with --enable-metrics (not in this profile's launch)"
    text = line(_sample(running=None, waiting=None, kv_cache_usage=None, metrics_note=note))  # type: ignore[arg-type]
    assert "running n/a  waiting n/a  kv n/a" in text and text.endswith(f"[{note}]")
    sick = line(_sample(health="unhealthy", health_reason="the engine exited: GET /health: connection refused"))  # type: ignore[arg-type]
    assert "health unhealthy (the engine exited" in sick


def test_terminal_block_shows_the_same_figures() -> None:
    from rich.console import Console

    from glmdeploy.commands.watch import _block

    out = Console(width=100, record=True, force_terminal=False)
    out.print(_block(_sample(health="unhealthy", health_reason="[x] broke")))  # type: ignore[arg-type]
    text = out.export_text()
    for expected in ("glm-a", "unhealthy: [x] broke", "1h02m", "$1.23 at $0.500/h", "running", "42.1%",
                     "Ctrl-C ends the watch"):
        assert expected in text, text


def test_shipped_sglang_profile_has_no_metrics_and_watch_knows_why() -> None:
    from glmdeploy.commands.watch import _launch_argv
    from glmdeploy.engines.metrics import unavailable_reason
    from glmdeploy.profiles import load_profile
    from glmdeploy.state import Deployment

    snapshot = load_profile("4x3090").model_dump(mode="json")
    d = Deployment.model_construct(profile_snapshot=snapshot)
    argv = _launch_argv(d)
    assert argv[:3] == ["python3", "-m", "sglang.launch_server"]
    assert unavailable_reason("sglang", argv) is not None


def test_a_little_kv_in_use_is_not_shown_as_zero() -> None:
    from glmdeploy.commands.watch import line

    assert line(_sample(kv_cache_usage=0.0002)).endswith("kv <0.1%")  # type: ignore[arg-type]
    assert line(_sample(kv_cache_usage=0.0)).endswith("kv 0.0%")  # type: ignore[arg-type]


# ------------------------------------------------- SGLang without --enable-metrics: the load from its log

VAST = "https://console.vast.test"
ENGINE = "http://engine.test:8000"
SGLANG_LOG = "\n".join([
    "[2026-12-03 10:00:00] The server is fired up and ready to roll!",
    "[2026-12-03 10:00:04 TP0] Prefill batch, #new-seq: 1, #new-token: 16, #cached-token: 0, token usage: 0.00, "
    "#running-req: 1, #queue-req: 0, ",
    "[2026-12-03 10:00:05 TP0] Decode batch, #running-req: 2, #token: 1843, token usage: 0.04, cuda graph: True, "
    "gen throughput (token/s): 97.40, #queue-req: 1, ",
    '[2026-12-03 10:00:06] INFO:     10.0.0.2:51234 - "GET /health HTTP/1.1" 200 OK',
])


def _sglang_deployment(isolated_env: Path) -> str:
    from glmdeploy.profiles import load_profile
    from glmdeploy.state import StateStore

    with StateStore.open() as store:
        d = store.create(profile="4x3090", profile_snapshot=load_profile("4x3090").model_dump(mode="json"),
                         api_url=VAST, endpoint_api_key="k-engine-0123456789", model="glm-4.7-flash")
        store.update(d.id, status="ready", endpoint=ENGINE + "/v1", instance_id=4242)
        return d.label


def _vast_and_engine(mock: Any, label: str, log: Any) -> dict[str, Any]:
    instance = {"id": 4242, "label": label, "actual_status": "running", "dph_total": 0.6,
                "start_date": 1_700_000_000.0, "machine_id": 7}
    mock.get(f"{VAST}/api/v1/instances/").respond(200, json={"next_token": None, "instances": [instance]})
    routes = {
        "logs": mock.put(f"{VAST}/api/v0/instances/request_logs/4242/").respond(
            200, json={"success": True, "result_url": "https://s3.test/instance_logs/abc.log"}),
        "upload": mock.get("https://s3.test/instance_logs/abc.log").mock(side_effect=log),
        "health": mock.get(f"{ENGINE}/health").respond(200),
        "metrics": mock.get(f"{ENGINE}/metrics").respond(404),
    }
    return routes


def _watch(*args: str) -> Any:
    return runner.invoke(app, ["status", "--watch", "--json", "--api-key", "vk-test-0123456789", *args])


def test_sglang_without_metrics_reads_its_load_from_the_log_once_per_30s(isolated_env: Path) -> None:
    import json

    import httpx
    import respx

    label = _sglang_deployment(isolated_env)
    with respx.mock(assert_all_called=False) as mock:
        routes = _vast_and_engine(mock, label, lambda _request: httpx.Response(200, text=SGLANG_LOG))
        result = _watch("--count", "3", "--interval", "0.01")
    assert result.exit_code == 0, result.output
    samples = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(samples) == 3
    for s in samples:
        assert (s["running"], s["waiting"], s["kv_cache_usage"], s["load_source"]) == (2, 1, 0.04, "log")
        assert s["metrics_note"].startswith("from the log: Decode batch at 10:00:05")
    # Three refreshes, one log fetch (Vast's request_logs is slow and rate limited), /metrics never asked.
    assert (routes["logs"].call_count, routes["upload"].call_count) == (1, 1)
    assert routes["metrics"].call_count == 0 and routes["health"].call_count == 3
    # A new watch (a new connection to Vast) fetches afresh: its first reading is not a previous watch's.
    with respx.mock(assert_all_called=False) as mock:
        routes = _vast_and_engine(mock, label, lambda _request: httpx.Response(200, text=SGLANG_LOG))
        assert _watch("--count", "1").exit_code == 0
    assert routes["logs"].call_count == 1


def test_sglang_log_fetch_failure_is_a_note_not_a_crash(isolated_env: Path) -> None:
    import json

    import respx

    label = _sglang_deployment(isolated_env)
    with respx.mock(assert_all_called=False) as mock:
        routes = _vast_and_engine(mock, label, lambda _request: None)
        routes["logs"].respond(404, json={"success": False, "error": "invalid_id", "msg": "Invalid instance id."})
        result = _watch("--count", "2", "--interval", "0.01")
    assert result.exit_code == 0, result.output
    samples = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(samples) == 2 and "Traceback" not in result.output
    for s in samples:
        assert (s["running"], s["waiting"], s["load_source"]) == (None, None, None)
        assert s["metrics_note"].startswith("could not fetch the log: "), s["metrics_note"]
    assert routes["logs"].call_count == 1
