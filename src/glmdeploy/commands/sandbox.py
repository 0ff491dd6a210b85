"""``glmdeploy sandbox start|stop|status`` (issue 3). Not implemented yet: says so and exits 1."""

from __future__ import annotations

from typing import Annotated

import typer

from glmdeploy.commands._common import JsonOutput, not_implemented

Name = Annotated[str | None, typer.Argument(help="Deployment name (default: the only active one).")]


sandbox_app = typer.Typer(help="The local Vast.ai and engine emulator.", no_args_is_help=True)


@sandbox_app.command("start")
def sandbox_start() -> None:
    """Start the sandbox in the background."""
    not_implemented("sandbox start")


@sandbox_app.command("stop")
def sandbox_stop() -> None:
    """Stop the sandbox this home started."""
    not_implemented("sandbox stop")


@sandbox_app.command("status")
def sandbox_status(json_output: JsonOutput = False) -> None:
    """Whether the sandbox runs, its URL, key and PID."""
    not_implemented("sandbox status")
