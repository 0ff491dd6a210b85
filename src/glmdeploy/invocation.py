"""How the user ran glmdeploy, so the commands we print for them to paste work as typed (issue 13 §3)."""

from __future__ import annotations

import os
import sys


def invocation() -> str:
    """``uv run glmdeploy`` under ``uv run`` (which sets UV_RUN_RECURSION_DEPTH), ``python -m glmdeploy``
    when run as a module, else ``glmdeploy`` (on PATH: ``uv tool install``, pip)."""
    if os.environ.get("UV_RUN_RECURSION_DEPTH"):
        return "uv run glmdeploy"
    if os.path.basename(sys.argv[0] if sys.argv else "") == "__main__.py":
        return "python -m glmdeploy"
    return "glmdeploy"
