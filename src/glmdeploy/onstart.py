"""The shell script a rented instance runs at start (Vast's ``onstart`` field).

Every argv element is ``shlex.quote``-d; the only unquoted expansions are the
``EnvRef`` markers, rendered as ``"$NAME"`` so that secrets live in the instance
environment and never in the script Vast stores and echoes back.
Vast caps onstart + args at 4096 characters (vast-api.md §11.9); ``render`` checks it.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from glmdeploy.engines import API_KEY_ENV, EnvRef, get_engine

if TYPE_CHECKING:
    from glmdeploy.profiles.model import Profile

ONSTART_LIMIT = 4096


def quote_arg(arg: str) -> str:
    if isinstance(arg, EnvRef):
        return f'"${{{arg.var}}}"'
    return shlex.quote(arg)


def shell_join(argv: Sequence[str]) -> str:
    return " ".join(quote_arg(a) for a in argv)


def display_command(argv: Sequence[str]) -> str:
    """The command as users read it: like ``shell_join`` but ``$NAME`` for env references."""
    return " ".join(str(a) if isinstance(a, EnvRef) else shlex.quote(a) for a in argv)


def launch_argv(profile: Profile, *, host: str = "0.0.0.0", port: int | None = None) -> list[str]:
    """The engine command exactly as the profile's seed would run it."""
    return get_engine(profile.engine.kind).argv(profile, host=host, port=port)


@dataclass(frozen=True)
class OnstartOptions:
    """Deployment-specific parts of the script."""

    deployment: str = "preview"


def render(profile: Profile, options: OnstartOptions | None = None) -> str:
    """The complete onstart script for ``profile``; raises ``ValueError`` when over Vast's limit."""
    options = options or OnstartOptions()
    engine = get_engine(profile.engine.kind)
    lines = [
        "#!/bin/bash",
        f"# glmdeploy onstart: profile {profile.name}, deployment {options.deployment}",
        "set -u",
    ]
    for target, source in engine.auth_env().items():
        lines.append(f'export {target}="${{{source}}}"')
    model_dir = engine.model_dir(profile)
    if model_dir is not None:
        download = ["hf", "download", profile.model.repo, "--local-dir", model_dir]
        if profile.model.revision:
            download += ["--revision", profile.model.revision]
        lines.append(shell_join(download) + " || exit 1")
    lines.append("exec " + shell_join(engine.argv(profile)))
    script = "\n".join(lines) + "\n"
    if len(script) > ONSTART_LIMIT:
        raise ValueError(f"onstart script is {len(script)} characters; Vast accepts at most {ONSTART_LIMIT}")
    return script


__all__ = ["API_KEY_ENV", "OnstartOptions", "display_command", "launch_argv", "render", "shell_join"]
