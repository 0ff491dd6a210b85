"""``glmdeploy profiles ...`` and profile loading, through the CLI."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from glmdeploy.cli import app
from glmdeploy.onstart import render
from glmdeploy.profiles import load_file, load_profile

runner = CliRunner()

SHIPPED = ["2x5090", "2x5090-nvfp4", "4x3090", "4x4090d", "4xh200-glm47-fp8-mtp", "h200", "h200-mtp", "mi300x"]


def write_profile(path: Path, **changes: object) -> Path:
    """A copy of the 4x3090 profile with ``changes`` applied (dotted keys reach into sections)."""
    data = load_profile("4x3090").model_dump(mode="json")
    for dotted, value in changes.items():
        node = data
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node[part]
        node[leaf] = value
    path.write_text(yaml.safe_dump(data))
    return path


def test_list_json_lists_every_shipped_profile_with_the_documented_fields() -> None:
    result = runner.invoke(app, ["profiles", "list", "--json"])
    assert result.exit_code == 0
    rows = json.loads(result.stdout)
    assert sorted(r["name"] for r in rows) == SHIPPED
    for row in rows:
        for key in ("name", "engine", "model", "gpu_names", "num_gpus", "context_length", "source"):
            assert key in row
        assert row["source"].endswith(".txt")


def test_show_prints_command_and_warnings(tmp_path: Path) -> None:
    result = runner.invoke(app, ["profiles", "show", "mi300x"])
    assert result.exit_code == 0
    assert "vllm serve zai-org/GLM-4.7-Flash" in result.stdout
    assert "warning:" in result.stdout and "20 attention heads" in result.stdout


def test_unknown_profile_names_the_known_ones_and_exits_2() -> None:
    result = runner.invoke(app, ["profiles", "show", "8xb200"])
    assert result.exit_code == 2
    assert "unknown profile '8xb200'; known: 2x5090, 2x5090-nvfp4, 4x3090" in result.stderr
    assert "Traceback" not in result.output


def test_invalid_yaml_names_file_and_position(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nengine: [unclosed\n")
    result = runner.invoke(app, ["profiles", "show", str(bad)])
    assert result.exit_code == 2
    line = result.stderr.strip()
    assert line.count("\n") == 0
    assert str(bad) in line and "invalid YAML at line" in line
    assert "Traceback" not in result.output


def test_unknown_key_is_named_with_its_path(tmp_path: Path) -> None:
    path = write_profile(tmp_path / "typo.yaml", **{"engine.contex_length": 4096})
    result = runner.invoke(app, ["profiles", "show", str(path)])
    assert result.exit_code == 2
    assert f"{path}: engine.contex_length: unknown key" in result.stderr


def test_wrong_type_is_named_with_its_path(tmp_path: Path) -> None:
    path = write_profile(tmp_path / "type.yaml", **{"hardware.num_gpus": "four"})
    result = runner.invoke(app, ["profiles", "show", str(path)])
    assert result.exit_code == 2
    assert "hardware.num_gpus:" in result.stderr and "integer" in result.stderr


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("model.repo", "zai-org/GLM'; rm -rf / #"),
        ("model.repo", "zai-org/$(reboot)"),
        ("engine.image", "lmsysorg/sglang:dev`id`"),
        ("model.served_name", "glm\nrm -rf /"),
        ("engine.tool_call_parser", "glm47;id"),
    ],
)
def test_shell_metacharacters_are_rejected(tmp_path: Path, key: str, value: str) -> None:
    path = write_profile(tmp_path / "evil.yaml", **{key: value})
    result = runner.invoke(app, ["profiles", "validate", str(path)])
    assert result.exit_code == 2
    assert key in result.stderr and "not allowed" in result.stderr


def test_env_keys_with_shell_characters_are_rejected(tmp_path: Path) -> None:
    path = write_profile(tmp_path / "env.yaml", env={"A;B": "1"})
    result = runner.invoke(app, ["profiles", "validate", str(path)])
    assert result.exit_code == 2
    assert "env.A;B" in result.stderr


def test_tensor_parallel_must_divide_the_head_count(tmp_path: Path) -> None:
    path = write_profile(tmp_path / "tp8.yaml", **{"engine.tensor_parallel": 8, "hardware.num_gpus": 8})
    result = runner.invoke(app, ["profiles", "validate", str(path)])
    assert result.exit_code == 2
    assert "does not divide glm-4.7-flash's 20 attention heads" in result.stderr


def test_extra_arguments_are_quoted_never_interpolated(tmp_path: Path) -> None:
    hostile = ["--chat-template", "$(touch pwned)", "`touch pwned2`", "a b; touch pwned3", "'\"", "${HOME}"]
    path = write_profile(tmp_path / "x.yaml", **{"engine.extra_args": hostile})
    profile = load_file(path)
    script = render(profile)
    assert subprocess.run(["bash", "-n"], input=script, text=True, check=False).returncode == 0
    # Only the engine's own lines run here: the proxy part would install and start nginx on this machine
    # (tests/fuzz/test_onstart_fuzz.py runs the whole script with every program stubbed).
    script = "\n".join(line for line in script.splitlines() if line.startswith(("set ", "export ", "exec ")))
    # Run the script with the engine replaced by a stub that prints its argv, one per line.
    stub_dir = tmp_path / "bin"
    stub_dir.mkdir()
    stub = stub_dir / "python3"
    stub.write_text('#!/bin/bash\nprintf "%s\\n" "$@"\n')
    stub.chmod(0o755)
    work = tmp_path / "work"
    work.mkdir()
    out = subprocess.run(
        ["bash", "-c", script],
        env={"PATH": f"{stub_dir}:/usr/bin:/bin", "GLM_API_KEY": "k-123", "HOME": str(tmp_path)},
        cwd=work,
        capture_output=True,
        text=True,
        check=True,
    )
    argv = out.stdout.splitlines()
    assert argv[-len(hostile) - 2 : -2] == hostile
    assert argv[-2:] == ["--api-key", "k-123"]
    assert list(work.iterdir()) == []


def test_user_profiles_dir_adds_and_shadows(isolated_env: Path) -> None:
    user_dir = isolated_env / "profiles"
    user_dir.mkdir(parents=True)
    write_profile(user_dir / "mine.yaml", name="mine", description="my own")
    result = runner.invoke(app, ["profiles", "list", "--json"])
    names = [r["name"] for r in json.loads(result.stdout)]
    assert "mine" in names and "4x3090" in names
    shown = runner.invoke(app, ["profiles", "show", "mine", "--json"])
    assert json.loads(shown.stdout)["description"] == "my own"


def test_extends_merges_sections(tmp_path: Path) -> None:
    child = tmp_path / "child.yaml"
    child.write_text("extends: h200\nname: child\nengine:\n  context_length: 65536\n")
    profile = load_file(child)
    assert profile.engine.context_length == 65536
    assert profile.engine.kind == "lightllm" and profile.env["LOADWORKER"] == "18"


def test_schema_is_json_schema_that_forbids_unknown_keys() -> None:
    result = runner.invoke(app, ["profiles", "schema"])
    assert result.exit_code == 0
    schema = json.loads(result.stdout)
    assert schema["additionalProperties"] is False
    assert {"name", "model", "hardware", "engine"} <= set(schema["required"])


def test_validate_accepts_every_shipped_file() -> None:
    files = sorted((Path(__file__).resolve().parents[1] / "profiles").glob("*.yaml"))
    assert len(files) == len(SHIPPED)
    result = runner.invoke(app, ["profiles", "validate", *map(str, files)])
    assert result.exit_code == 0, result.stderr
