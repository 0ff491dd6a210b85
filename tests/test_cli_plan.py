"""``glmdeploy plan`` through the CLI: the acceptance list of issue 2 §6 and shared/spec/cli.md."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from glmdeploy.cli import app
from glmdeploy.onstart import display_command, launch_argv
from glmdeploy.profiles import known_names, load_profile
from glmdeploy.vast.filters import offer_query

runner = CliRunner()

SPEC_FIELDS = {
    "profile",
    "attention",
    "kv_bytes_per_token",
    "per_gpu",
    "kv_pool_tokens",
    "max_context_tokens",
    "max_concurrent_sequences",
    "fits",
    "launch_command",
    "search_filters",
}
PER_GPU_FIELDS = {"total_gib", "weights_gib", "kv_pool_gib", "overhead_gib"}
EXTRA_FIELDS = {"kv_bytes_per_token_total", "verdict", "reason", "warnings", "gpu", "context_length", "uncertainty"}


def plan_json(*args: str) -> dict[str, Any]:
    result = runner.invoke(app, ["plan", *args, "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert isinstance(data, dict)
    return data


def test_4x3090_plans_mla_with_a_pool_far_above_8192() -> None:
    data = plan_json("--profile", "4x3090")
    assert data["attention"] == "mla"
    assert data["kv_bytes_per_token"] == 54_144
    # memory.md §5.5 estimates ~91k at SGLang's default fraction; the profile's 0.85 gives a little more.
    assert 70_000 <= data["max_context_tokens"] <= 110_000
    assert data["fits"] is True
    per_gpu = data["per_gpu"]
    assert per_gpu["total_gib"] == pytest.approx(23.6, abs=0.05)
    assert per_gpu["weights_gib"] == pytest.approx(14.1, abs=0.1)
    assert 0 < per_gpu["overhead_gib"] < 3
    # The breakdown adds up: budget = weights + overhead + KV pool.
    assert per_gpu["budget_gib"] == pytest.approx(
        per_gpu["weights_gib"] + per_gpu["overhead_gib"] + per_gpu["kv_pool_gib"], abs=0.01
    )


@pytest.mark.parametrize("override", [["--image", "lmsysorg/sglang:v0.5.7"], ["--attention", "mha"]])
def test_4x3090_without_mla_needs_962560_bytes_per_token(override: list[str]) -> None:
    data = plan_json("--profile", "4x3090", *override)
    assert data["attention"] == "mha"
    assert data["kv_bytes_per_token_total"] == 962_560
    assert data["kv_bytes_per_token"] == 240_640
    # memory.md §5.5: ~20k tokens at TP4 under MHA, still enough for the guide's 8,192.
    assert 15_000 <= data["kv_pool_tokens"] <= 26_000


@pytest.mark.parametrize("name", known_names())
def test_every_shipped_profile_plans_with_the_spec_fields(name: str) -> None:
    data = plan_json("--profile", name)
    assert SPEC_FIELDS | EXTRA_FIELDS <= data.keys()
    assert PER_GPU_FIELDS <= data["per_gpu"].keys()
    assert data["attention"] in ("mla", "mha")
    assert isinstance(data["fits"], bool)
    profile = load_profile(name)
    assert data["launch_command"] == display_command(launch_argv(profile))
    assert data["search_filters"] == json.loads(json.dumps(offer_query(profile.hardware)))
    for warning in profile.warnings:
        assert warning in data["warnings"]


def test_json_never_contains_the_endpoint_key_value() -> None:
    data = plan_json("--profile", "4x3090")
    assert "$GLM_API_KEY" in data["launch_command"]  # a reference, resolved only on the host


def test_human_output_shows_the_budget_verdict_and_warnings() -> None:
    result = runner.invoke(app, ["plan", "--profile", "4x3090"])
    assert result.exit_code == 0
    out = result.stdout
    for needle in ("MLA", "54,144 B/token", "weights", "overhead", "KV pool", "max context", "verdict:      fits"):
        assert needle in out
    assert "MHA arithmetic" in out  # the profile's own warning


def test_context_length_that_cannot_fit_says_so_and_exits_0() -> None:
    result = runner.invoke(app, ["plan", "--profile", "4x3090", "--context-length", "190000"])
    assert result.exit_code == 0
    assert "does NOT fit" in result.stdout
    assert "verdict:      does not fit" in result.stdout
    data = plan_json("--profile", "4x3090", "--context-length", "190000")
    assert data["fits"] is False
    assert data["context_length"] == 190_000
    assert data["verdict"] == "does not fit"


def test_tight_profile_reports_tight() -> None:
    # 2x5090 holds ~63k tokens at the estimate but only ~33k at the band's pessimistic end.
    data = plan_json("--profile", "2x5090", "--context-length", "50000")
    assert data["verdict"] == "tight"
    assert data["fits"] is True
    assert data["uncertainty"]["kv_pool_tokens_low"] < 50_000 <= data["kv_pool_tokens"]


def test_unknown_profile_exits_2_listing_known_ones() -> None:
    result = runner.invoke(app, ["plan", "--profile", "x"])
    assert result.exit_code == 2
    assert "unknown profile 'x'; known: " in result.stderr
    assert "4x3090" in result.stderr
    assert "Traceback" not in result.output


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--attention", "gqa"], "--attention"),
        (["--image", "bad image"], "--image"),
        (["--context-length", "0"], "context-length"),
    ],
)
def test_bad_options_exit_2(args: list[str], needle: str) -> None:
    result = runner.invoke(app, ["plan", "--profile", "4x3090", *args])
    assert result.exit_code == 2
    assert needle in result.output
    assert "Traceback" not in result.output


def test_forcing_mla_on_a_gqa_model_exits_2() -> None:
    result = runner.invoke(app, ["plan", "--profile", "4xh200-glm47-fp8-mtp", "--attention", "mla"])
    assert result.exit_code == 2
    assert "no MLA latent" in result.stderr


def test_profile_given_as_a_path(tmp_path: Path) -> None:
    data = load_profile("4x3090").model_dump(mode="json")
    data["name"] = "mine"
    data["engine"]["mem_fraction"] = None
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump(data))
    plan = plan_json("--profile", str(path))
    assert plan["profile"] == "mine"
    assert plan["per_gpu"]["memory_fraction_source"] == "SGLang default heuristic"


def test_plan_json_says_what_the_engine_will_print() -> None:
    # Issue 11 §4: engine_reported, max_model_len_accepted, the terms, the engine's resolved settings.
    data = plan_json("--profile", "2x5090-nvfp4")
    assert data["engine_reported"][1] == f"GPU KV cache size: {data['kv_pool_tokens']:,} tokens"
    assert data["engine_reported"][2].startswith("Maximum concurrency for 82,000 tokens per request: ")
    assert data["max_model_len_accepted"] == 202_752
    assert data["block_size"] == 16
    assert data["engine_settings"]["max_num_seqs"] == 4
    names = [t["name"] for t in data["memory_terms"]]
    assert names[0] == "weights" and "cuda_graphs" in names
    assert all(t["low_gib"] <= t["gib"] <= t["high_gib"] and t["source"] for t in data["memory_terms"])
    text = runner.invoke(app, ["plan", "--profile", "2x5090-nvfp4"]).stdout
    assert "engine says:  GPU KV cache size: " in text
    assert "cuda_graphs" in text
    sglang = plan_json("--profile", "4x3090")
    assert any(
        line.startswith(f"max_total_num_tokens={sglang['kv_pool_tokens']}") for line in sglang["engine_reported"]
    )
    # SGLang caps a request at min(context_len, max_total_num_tokens) - 1 rather than refusing.
    assert sglang["max_model_len_accepted"] == min(sglang["kv_pool_tokens"], 202_752) - 1
