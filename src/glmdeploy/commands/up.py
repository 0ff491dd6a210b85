"""``glmdeploy up`` (issue 4). Not implemented yet: says so and exits 1."""

from __future__ import annotations

from typing import Annotated

import typer

from glmdeploy.commands._common import ApiKey, ApiUrl, JsonOutput, ProfileRef, Sandbox, not_implemented

Name = Annotated[str | None, typer.Argument(help="Deployment name (default: the only active one).")]


def up(
    profile: ProfileRef,
    name: Annotated[str | None, typer.Option(help="Deployment name.")] = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Rent without asking.")] = False,
    json_output: JsonOutput = False,
    api_key: ApiKey = None,
    api_url: ApiUrl = None,
    sandbox: Sandbox = False,
) -> None:
    """Rent, start, verify and print a ready GLM endpoint."""
    not_implemented("up")
