"""The CLI's shape: version, help, lazy imports, exit codes for stubs."""

from __future__ import annotations

import json
import subprocess
import sys

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
