"""What a smoke run aims at: URL forms, check selection, and the checks a profile rules out."""

from __future__ import annotations

import pytest

from glmdeploy.errors import UsageError
from glmdeploy.profiles import load_profile
from glmdeploy.smoke import CHECK_NAMES, Target, profile_skips, select_checks


@pytest.mark.parametrize(
    "url",
    ["http://h:8000", "http://h:8000/", "http://h:8000/v1", "http://h:8000/v1/", " http://h:8000/v1 "],
)
def test_root_or_base_url(url: str) -> None:
    target = Target.from_url(url)
    assert (target.api_base, target.root) == ("http://h:8000/v1", "http://h:8000")


def test_a_path_prefix_is_kept() -> None:
    assert Target.from_url("https://gw.example/llm/v1").root == "https://gw.example/llm"
    assert Target.from_url("https://gw.example/llm").api_base == "https://gw.example/llm/v1"


@pytest.mark.parametrize("url", ["h:8000", "ftp://h/v1", "http:///v1", "http://h/v1?key=x", "http://u:p@h/v1"])
def test_bad_urls(url: str) -> None:
    with pytest.raises(UsageError):
        Target.from_url(url)


def test_the_key_never_shows_in_repr() -> None:
    assert "sekrit" not in repr(Target.from_url("http://h", api_key="sekrit"))


def test_select_keeps_the_fixed_order() -> None:
    assert select_checks() == list(CHECK_NAMES)
    assert select_checks(only=["tools", "health"]) == ["health", "tools"]
    assert select_checks(skip=["auth", "max_tokens"]) == ["health", "models", "chat", "stream", "reasoning", "tools"]


@pytest.mark.parametrize(("only", "skip"), [(["nope"], []), ([], ["Health"]), (["chat"], ["chat"])])
def test_select_refuses_unknown_or_empty(only: list[str], skip: list[str]) -> None:
    with pytest.raises(UsageError):
        select_checks(only, skip)


@pytest.mark.parametrize(
    ("profile", "skipped"),
    [("4x3090", {"reasoning", "tools"}), ("2x5090", set()), ("h200", set())],
)
def test_shipped_profiles(profile: str, skipped: set[str]) -> None:
    target = Target.from_profile("http://h/v1", "k", model="m", profile=load_profile(profile))
    assert set(target.profile_skips) == skipped
    assert target.engine == load_profile(profile).engine.kind


def test_vllm_without_auto_tool_choice_skips_tools() -> None:
    snapshot = load_profile("2x5090").model_dump(mode="json")
    snapshot["engine"]["auto_tool_choice"] = False
    assert profile_skips(snapshot) == {
        "tools": "profile 2x5090 does not set auto_tool_choice: vLLM refuses tool_choice auto"
    }
    snapshot["engine"]["extra_args"] = ["--enable-auto-tool-choice"]
    assert profile_skips(snapshot) == {}


def test_parsers_given_as_extra_args_count() -> None:
    snapshot = load_profile("4x3090").model_dump(mode="json")
    snapshot["engine"]["extra_args"] = ["--reasoning-parser", "glm45", "--tool-call-parser", "glm47"]
    assert profile_skips(snapshot) == {}


def test_an_odd_snapshot_rules_nothing_out() -> None:
    assert profile_skips({}) == {}
    assert Target.from_profile("http://h", None, model=None, profile={"engine": {"kind": "tgi"}}).engine is None
