"""Find the Vast.ai API key where the official vastai tools keep it (vast-api.md §1.3).

Order, first hit wins: the explicit ``--api-key`` value, env ``VAST_API_KEY``,
``$XDG_CONFIG_HOME/vastai/vast_api_key`` (``~/.config`` when XDG_CONFIG_HOME is unset), then the
legacy ``~/.vast_api_key``. Values and file contents are stripped; empty ones are skipped, so a
blank env var or an empty file falls through to the next place instead of sending an empty key.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from glmdeploy.errors import MissingApiKey, UsageError

ENV_VAR = "VAST_API_KEY"
MISSING_KEY_MESSAGE = "no Vast.ai API key: pass --api-key, set VAST_API_KEY, or run 'vastai set api-key KEY'"


@dataclass(frozen=True)
class ApiKey:
    """A key and where it came from (the source helps a user fix a refused key); repr hides the value."""

    value: str = field(repr=False)
    source: str


def key_files(environ: Mapping[str, str] | None = None, home: Path | None = None) -> list[Path]:
    """The files that may hold the key, in the order they are tried."""
    env = os.environ if environ is None else environ
    user_home = Path.home() if home is None else home
    config_home = env.get("XDG_CONFIG_HOME") or str(user_home / ".config")
    return [Path(config_home) / "vastai" / "vast_api_key", user_home / ".vast_api_key"]


def find_api_key(
    explicit: str | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    home: Path | None = None,
) -> ApiKey | None:
    """The first key found, or None when there is none anywhere."""
    env = os.environ if environ is None else environ
    if explicit is not None and explicit.strip():
        return ApiKey(explicit.strip(), "--api-key")
    from_env = env.get(ENV_VAR, "").strip()
    if from_env:
        return ApiKey(from_env, ENV_VAR)
    for path in key_files(env, home):
        try:
            contents = path.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError):
            # Missing, unreadable or not a text file: the official tools also just move on.
            continue
        if contents:
            return ApiKey(contents, str(path))
    return None


def discover_api_key(
    explicit: str | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    home: Path | None = None,
) -> ApiKey:
    """Like ``find_api_key`` but a missing key is a usage error that says how to fix it."""
    found = find_api_key(explicit, environ=environ, home=home)
    if found is None:
        raise MissingApiKey(MISSING_KEY_MESSAGE)
    if not sendable(found.value):
        # httpx would refuse the header with an error quoting it (the key) in full; say what is
        # wrong and where the key came from, never the key itself.
        raise UsageError(
            f"the Vast.ai API key from {found.source} contains a space, a line break, a control or a non-ASCII "
            "character, so it cannot be sent; a key is one line of printable ASCII",
            hint="check for two keys in one file, or a stray character pasted with the key",
        )
    return found


def sendable(key: str) -> bool:
    """Whether ``key`` can travel in ``Authorization: Bearer KEY``: visible ASCII, no whitespace."""
    return all("!" <= ch <= "~" for ch in key)
