"""The engines' flag tables (engines/flag_tables.json) and the launch check built on them.

Facts asserted here come from the recordings of a real vLLM 0.24.0 (shared/reference/real-vllm-0.24.0/
argv-acceptance.txt) and from the engines' argument definitions the tables were generated from.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from glmdeploy.cli import app
from glmdeploy.engines import get_engine
from glmdeploy.engines.checks import check_launch
from glmdeploy.engines.flags import history
from glmdeploy.onstart import launch_argv
from glmdeploy.profiles import known_names, load_file, load_profile

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference" / "real-vllm-0.24.0"
SHIPPED = ["2x5090", "2x5090-nvfp4", "4x3090", "4x4090d", "4xh200-glm47-fp8-mtp", "h200", "h200-mtp", "mi300x"]


def test_every_shipped_profile_is_tested() -> None:
    assert set(SHIPPED) <= set(known_names())


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_profile_argv_is_accepted_by_its_pinned_version(name: str) -> None:
    profile = load_profile(name)
    check = check_launch(profile)
    assert check.version_known, check.version_warning
    assert check.table is not None, f"no flag table for {check.engine_label}"
    assert check.rejected == (), check.flags_refusal
    assert check.model_error is None, check.model_refusal
    # The table itself, option by option: every option of the rendered command is in it.
    engine = get_engine(profile.engine.kind)
    options = [a for a in launch_argv(profile)[len(engine.program) :] if a.startswith("--")]
    assert options and all(check.table.accepts(o) for o in options)


@pytest.mark.parametrize(("name", "flag"), [("2x5090", "--swap-space"), ("mi300x", "--disable-log-requests")])
def test_profiles_real_vllm_refused_no_longer_emit_the_removed_flag(name: str, flag: str) -> None:
    # The recording: real vLLM 0.24.0 answered "unrecognized arguments: <flag>" to these two profiles.
    recorded = (REFERENCE / "argv-acceptance.txt").read_text(encoding="utf-8")
    assert f"error: unrecognized arguments: {flag}" in recorded
    assert flag not in launch_argv(load_profile(name))


def test_vllm_table_matches_the_recorded_acceptance() -> None:
    table = history("vllm").table((0, 24, 0))
    assert table is not None
    assert not table.accepts("--swap-space") and not table.accepts("--disable-log-requests")
    assert table.why_not("--swap-space") == "removed in 0.18.0"
    assert table.why_not("--disable-log-requests") == "removed in 0.17.0"
    for accepted in ("--no-enable-prefix-caching", "--speculative-config.method", "--max_model_len", "--port=8000",
                     "-O3", "-tp"):
        assert table.accepts(accepted), accepted
    older = history("vllm").table((0, 15, 1))
    assert older is not None and older.accepts("--swap-space") and older.accepts("--disable-log-requests")


def test_sglang_builder_uses_the_documented_replacement_for_cuda_graph_max_bs(tmp_path: Path) -> None:
    base = load_profile("4x3090").model_dump(mode="json")
    base["engine"]["cuda_graph_max_batch"] = 64
    for image, expected in (("lmsysorg/sglang:v0.5.9", "--cuda-graph-max-bs"),
                            ("lmsysorg/sglang:v0.5.23", "--cuda-graph-max-bs-decode")):
        base["engine"]["image"] = image
        path = tmp_path / f"p-{image.rpartition(':')[2]}.yaml"
        path.write_text(json.dumps(base), encoding="utf-8")
        argv = launch_argv(load_file(path))
        assert argv[argv.index(expected) + 1] == "64"
        assert check_launch(load_file(path)).rejected == ()


def test_extra_args_are_checked_too(tmp_path: Path) -> None:
    path = tmp_path / "mine.yaml"
    path.write_text("extends: 2x5090-nvfp4\nname: mine\nengine:\n  extra_args: [\"--swap-space\", \"16\"]\n",
                    encoding="utf-8")
    check = check_launch(load_file(path))
    assert [r.flag for r in check.rejected] == ["--swap-space"]
    assert check.flags_refusal is not None
    assert check.flags_refusal.startswith("--swap-space is not accepted by vLLM 0.24.0 (removed in 0.18.0)")


@pytest.mark.parametrize(
    ("image", "known", "floating"),
    [
        ("vllm/vllm-openai:v0.24.0", True, False),
        ("docker.io/vllm/vllm-openai:v0.24.0", True, False),
        ("vllm/vllm-openai:v9.9.9", False, False),
        ("vllm/vllm-openai:latest", True, True),
        ("lmsysorg/sglang:v0.5.9-cu129", True, False),
        ("lmsysorg/sglang:dev-pr-17247", True, False),
        ("lmsysorg/sglang:no-such-tag", False, False),
        ("ghcr.io/modeltc/lightllm:v1.2.0", True, False),
    ],
)
def test_image_catalogue(image: str, known: bool, floating: bool) -> None:
    kind = {"vllm": "vllm", "lmsysorg": "sglang", "ghcr.io": "lightllm"}[image.removeprefix("docker.io/").split("/")[0]]
    info = get_engine(kind).image_version(image)
    assert (info.known, info.floating) == (known, floating)


def test_too_old_images_cannot_load_glm_4_7_flash() -> None:
    assert get_engine("vllm").model_support_error("glm-4.7-flash", "vllm/vllm-openai-rocm:v0.15.1")
    assert get_engine("vllm").model_support_error("glm-4.7-flash", "vllm/vllm-openai:v0.24.0") is None
    assert get_engine("sglang").model_support_error("glm-4.7-flash", "lmsysorg/sglang:v0.5.4")
    assert get_engine("lightllm").model_support_error("glm-4.7-flash", "ghcr.io/modeltc/lightllm:v1.1.0")


# ---------------------------------------------------------------- the commands refuse before renting

runner = CliRunner()


def _user_profile(tmp_path: Path) -> Path:
    path = tmp_path / "swap.yaml"
    path.write_text('extends: 2x5090-nvfp4\nname: swap\nengine:\n  extra_args: ["--swap-space", "16"]\n',
                    encoding="utf-8")
    return path


@pytest.mark.parametrize(
    "command",
    [["profiles", "validate", "{path}"], ["plan", "-p", "{path}"], ["up", "-p", "{path}", "--yes"]],
)
def test_removed_flag_in_extra_args_is_refused_with_one_line_and_exit_2(
    command: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GLMDEPLOY_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("VAST_API_KEY", "k" * 64)
    monkeypatch.setenv("VAST_URL", "http://127.0.0.1:9")  # nothing listens: a rental would fail loudly
    path = _user_profile(tmp_path)
    result = runner.invoke(app, [a.format(path=path) for a in command])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert "--swap-space" in lines[0] and "vLLM 0.24.0" in lines[0] and "removed in 0.18.0" in lines[0]
    assert "Traceback" not in result.output


def test_unknown_image_tag_warns_in_plan_and_is_refused_by_up_unless_forced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GLMDEPLOY_HOME", str(tmp_path / "home"))
    image = "vllm/vllm-openai:v9.9.9"
    planned = runner.invoke(app, ["plan", "-p", "2x5090-nvfp4", "--image", image])
    assert planned.exit_code == 0, planned.output
    assert f"warning: image tag of {image} names no known vLLM release: its version is not known" in planned.stderr
    refused = runner.invoke(app, ["up", "-p", "2x5090-nvfp4", "--image", image, "--yes"])
    assert refused.exit_code == 2
    assert "its version is not known; --force rents anyway" in refused.stderr


def test_one_list_of_engine_kinds() -> None:
    from glmdeploy.engines import ENGINE_KINDS, ENGINES
    from glmdeploy.profiles.model import Profile
    from glmdeploy.sandbox.engines.launch import image_kind
    from glmdeploy.smoke import ENGINE_KINDS as SMOKE_KINDS

    assert tuple(ENGINES) == ENGINE_KINDS == SMOKE_KINDS
    # The sandbox knows an engine's images from the engine module itself.
    assert [image_kind(ENGINES[k].image_repos[0] + ":v1.0.0") for k in ENGINE_KINDS] == list(ENGINE_KINDS)
    schema = Profile.model_json_schema()
    assert tuple(schema["$defs"]["EngineSpec"]["properties"]["kind"]["enum"]) == ENGINE_KINDS


def test_a_moving_tag_warns_and_is_checked_against_the_newest_table(tmp_path: Path) -> None:
    data = load_profile("2x5090-nvfp4").model_dump(mode="json")
    data["engine"]["image"] = "vllm/vllm-openai:latest"
    path = tmp_path / "latest.yaml"
    path.write_text(json.dumps(data), encoding="utf-8")
    check = check_launch(load_file(path))
    newest = ".".join(str(p) for p in history("vllm").newest)
    assert check.version_warning == (
        f"image vllm/vllm-openai:latest is a moving tag: its vLLM version is not pinned, "
        f"checked against the newest known, {newest}"
    )
    assert check.rejected == ()


def test_profiles_show_names_the_engine_version_and_the_check(tmp_path: Path) -> None:
    shown = runner.invoke(app, ["profiles", "show", "mi300x"])
    assert shown.exit_code == 0
    assert "engine:   vLLM 0.27.1, every flag of the command accepted" in shown.stdout
    detail = json.loads(runner.invoke(app, ["profiles", "show", "2x5090", "--json"]).stdout)
    assert detail["engine_check"] == {
        "engine": "vLLM 0.24.0", "version": "0.24.0", "version_known": True, "rejected": [], "problems": [],
    }
    swapped = json.loads(runner.invoke(app, ["profiles", "show", str(_user_profile(tmp_path)), "--json"]).stdout)
    assert swapped["engine_check"]["rejected"] == [{"flag": "--swap-space", "reason": "removed in 0.18.0"}]


def test_an_image_of_another_engine_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GLMDEPLOY_HOME", str(tmp_path / "home"))
    refused = runner.invoke(app, ["up", "-p", "2x5090-nvfp4", "--image", "lmsysorg/sglang:v0.5.23", "--yes"])
    assert refused.exit_code == 2
    assert "image lmsysorg/sglang:v0.5.23 ships SGLang, not vLLM: the launch would fail" in refused.stderr


def test_the_tables_are_consistent() -> None:
    for kind in ("vllm", "sglang", "lightllm"):
        flags = history(kind)
        assert list(flags.versions) == sorted(flags.versions) and set(flags.versions) <= set(flags.releases)
        for name, (since, until) in flags.spans.items():
            assert name.startswith("-") and since in flags.versions, name
            assert until is None or (until in flags.versions and since < until), name
    # engines.md §4.1: LightLLM has no API-key option at all; vLLM and SGLang do.
    assert not history("lightllm").table((1, 2, 0)).accepts("--api-key")  # type: ignore[union-attr]
    assert history("sglang").table((0, 5, 8)).accepts("--api-key")  # type: ignore[union-attr]
