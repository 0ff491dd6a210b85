"""Where glmdeploy keeps local state.

``$GLMDEPLOY_HOME`` wins (tests always set it); otherwise the XDG data directory, as
``platformdirs`` would compute it on Linux, without pulling in that dependency for one path.
"""

from __future__ import annotations

import os
from pathlib import Path


def home() -> Path:
    explicit = os.environ.get("GLMDEPLOY_HOME")
    if explicit:
        return Path(explicit).expanduser()
    data = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(data) / "glmdeploy"


def ensure_home() -> Path:
    """Create the state directory owner-only (0700): it holds endpoint keys."""
    path = home()
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o700)
    return path


def user_profiles_dir() -> Path:
    return home() / "profiles"
