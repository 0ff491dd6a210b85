"""`status --watch` option checks (issue 13 item 6): bad values are one `error:` line and exit 2,
before any state is opened or anything is contacted."""

from __future__ import annotations

from pathlib import Path

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
