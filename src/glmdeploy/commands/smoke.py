"""``glmdeploy smoke`` (issue 5). Not implemented yet: says so and exits 1."""

from __future__ import annotations

from typing import Annotated

import typer

from glmdeploy.commands._common import JsonOutput, not_implemented

Name = Annotated[str | None, typer.Argument(help="Deployment name (default: the only active one).")]


def smoke(name: Name = None, json_output: JsonOutput = False) -> None:
    """Run the smoke checks against a deployment or any OpenAI-compatible URL."""
    not_implemented("smoke")
