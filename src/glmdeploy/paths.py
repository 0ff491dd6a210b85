"""Where glmdeploy keeps local state.

``$GLMDEPLOY_HOME`` wins (tests always set it); otherwise the XDG data directory, as
``platformdirs`` would compute it on Linux, without pulling in that dependency for one path.
"""

from __future__ import annotations

import os
from pathlib import Path

from glmdeploy.errors import UsageError


def home() -> Path:
    explicit = os.environ.get("GLMDEPLOY_HOME")
    if explicit:
        return Path(explicit).expanduser()
    data = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(data) / "glmdeploy"


def ensure_home() -> Path:
    """Create the state directory owner-only (0700): it holds endpoint keys.

    A directory that cannot be made or written (a file or a broken link in the way, no permission)
    is bad input, exit 2, before anything else happens.
    """
    path = home()
    try:
        path.mkdir(parents=True, exist_ok=True)
        path.chmod(0o700)
    except OSError as exc:
        raise unusable_state(path, exc) from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise unusable_state(path, PermissionError("not writable"))
    return path


def unusable_state(path: Path, exc: OSError) -> UsageError:
    """One line for a state directory (or a file in it) that cannot be used, naming the fix."""
    if path.is_symlink() and not path.exists():
        reason = "a broken link"
    elif isinstance(exc, FileExistsError):
        reason = "a file or a broken link is in the way"
    else:
        reason = (exc.strerror or str(exc)).lower()
    where = "$GLMDEPLOY_HOME" if os.environ.get("GLMDEPLOY_HOME") else "the state directory"
    return UsageError(
        f"cannot use {path} for glmdeploy's state ({reason}): point {where} at a directory you can write"
    )


def user_profiles_dir() -> Path:
    return home() / "profiles"
