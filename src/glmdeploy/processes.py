"""Whether a process exists, for the records that name their owner (state rows, sandbox.json)."""

from __future__ import annotations

import os


def pid_alive(pid: int) -> bool:
    """True if a process with this PID exists (even one we may not signal)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
