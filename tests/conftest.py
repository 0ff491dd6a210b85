"""Shared test isolation: every test gets its own GLMDEPLOY_HOME and no ambient credentials."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

AMBIENT = (
    "VAST_API_KEY",
    "VAST_URL",
    "GLMDEPLOY_SANDBOX",
    "GLMDEPLOY_DEBUG",
    "XDG_CONFIG_HOME",
    "OPENAI_API_KEY",
    "OPENAI_BASE_URL",
)


@pytest.fixture(autouse=True)
def isolated_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    home = tmp_path / "glmdeploy-home"
    monkeypatch.setenv("GLMDEPLOY_HOME", str(home))
    for var in AMBIENT:
        monkeypatch.delenv(var, raising=False)
    # Key discovery falls back to ~/.config/vastai and ~/.vast_api_key: point HOME somewhere empty.
    fake_user = tmp_path / "user-home"
    fake_user.mkdir()
    monkeypatch.setenv("HOME", str(fake_user))
    monkeypatch.setenv("COLUMNS", "200")
    yield home
