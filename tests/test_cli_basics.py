"""The CLI's shape: version, help, lazy imports, exit codes for stubs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from glmdeploy import __version__
from glmdeploy.cli import app

runner = CliRunner()

HEAVY = ("httpx", "glmdeploy.vast", "glmdeploy.sandbox", "glmdeploy.state", "sqlite3", "starlette", "uvicorn")


def test_version() -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.stdout.strip() == f"glmdeploy {__version__}"


def test_help_lists_the_command_surface() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("profiles", "plan", "offers", "up", "list", "status", "logs", "env", "destroy",
                    "smoke", "bench", "ci", "sandbox"):
        assert f"  {command} " in result.stdout


def test_help_does_not_import_the_network_stack_or_the_sandbox() -> None:
    code = (
        "import sys, json\n"
        "sys.argv = ['glmdeploy', '--help']\n"
        "from glmdeploy.cli import main\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        f"print(json.dumps(sorted(m for m in sys.modules if m.startswith({HEAVY!r}))))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = json.loads(out.stdout.strip().splitlines()[-1])
    assert loaded == []


# Completion runs on every TAB press: none of the runtime stack may load for it (sqlite3 may: it reads the names).
COMPLETION_HEAVY = (*(m for m in HEAVY if m != "sqlite3"), "pydantic", "rich", "yaml", "glmdeploy.profiles",
                    "glmdeploy.engines")


def _complete(home: Path, words: str, extra: dict[str, str] | None = None) -> tuple[list[str], list[str]]:
    """Run the bash completion of ``words`` (the last word is being typed) the way the shell script does;
    returns the suggestions and the heavy modules that were loaded."""
    code = (
        "import sys, json\n"
        "from glmdeploy.cli import main\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        f"print(json.dumps(sorted(m for m in sys.modules if m.startswith({COMPLETION_HEAVY!r}))), file=sys.stderr)\n"
    )
    parts = words.split(" ")
    env = {**os.environ, "GLMDEPLOY_HOME": str(home), "_GLMDEPLOY_COMPLETE": "complete_bash",
           "COMP_WORDS": words, "COMP_CWORD": str(len(parts) - 1), **(extra or {})}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    loaded = json.loads(out.stderr.strip().splitlines()[-1])
    return out.stdout.split(), loaded


@pytest.fixture
def home_with_deployments(tmp_path: Path) -> Path:
    from glmdeploy.state import StateStore

    with StateStore.open(tmp_path / "state.db") as store:
        store.create(profile="h200", profile_snapshot={}, name="team-box")
        gone = store.create(profile="h200", profile_snapshot={}, name="old-box")
        store.mark_destroyed(gone.id)
    return tmp_path


def test_completion_offers_profile_names_without_the_runtime_stack(home_with_deployments: Path) -> None:
    suggestions, loaded = _complete(home_with_deployments, "glmdeploy up --profile ")
    assert "4x3090" in suggestions and "h200" in suggestions
    assert loaded == []
    suggestions, _ = _complete(home_with_deployments, "glmdeploy plan --profile h2")
    assert suggestions == ["h200", "h200-mtp"]


def test_completion_offers_active_deployment_names(home_with_deployments: Path) -> None:
    for command in ("status", "destroy", "logs", "env", "smoke", "bench"):
        suggestions, loaded = _complete(home_with_deployments, f"glmdeploy {command} ")
        assert "team-box" in suggestions, command
        assert "old-box" not in suggestions  # destroyed: no NAME resolves to it
        assert loaded == []


@pytest.mark.parametrize("shell", ["zsh", "fish"])
def test_zsh_and_fish_complete_names_too(home_with_deployments: Path, shell: str) -> None:
    # What the scripts `glmdeploy completion zsh|fish` print set: the words so far in _TYPER_COMPLETE_ARGS.
    extra = {"_GLMDEPLOY_COMPLETE": f"complete_{shell}", "_TYPER_COMPLETE_ARGS": "glmdeploy status ",
             "_TYPER_COMPLETE_FISH_ACTION": "get-args"}
    out, loaded = _complete(home_with_deployments, "glmdeploy status ", extra)
    assert any("team-box" in word for word in out) and loaded == []
    extra["_TYPER_COMPLETE_ARGS"] = "glmdeploy up --profile 4x"
    out, _ = _complete(home_with_deployments, "glmdeploy up --profile 4x", extra)
    assert any("4x3090" in word for word in out)


@pytest.mark.parametrize("state", ["missing", "garbage", "a-directory"])
def test_completion_with_an_unusable_state_dir_offers_nothing_quietly(tmp_path: Path, state: str) -> None:
    if state == "garbage":
        (tmp_path / "state.db").write_bytes(b"not a database")
    elif state == "a-directory":
        (tmp_path / "state.db").mkdir()
    suggestions, _ = _complete(tmp_path / "nowhere" if state == "missing" else tmp_path, "glmdeploy status ")
    assert suggestions == []
    assert not (tmp_path / "nowhere").exists()  # completing creates no state dir


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_completion_command_prints_the_script_for_each_shell(shell: str) -> None:
    result = runner.invoke(app, ["completion", shell])
    assert result.exit_code == 0
    assert "_GLMDEPLOY_COMPLETE=complete_" + shell in result.stdout


def test_completion_command_rejects_another_shell_with_one_line() -> None:
    result = runner.invoke(app, ["completion", "tcsh"])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == ["error: unsupported shell 'tcsh': choose one of bash, zsh, fish"]
