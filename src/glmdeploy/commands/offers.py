"""``glmdeploy offers``: ranked offers for a profile (issue 4). Not implemented yet: says so and exits 1."""

from __future__ import annotations

from typing import Annotated

import typer

from glmdeploy.commands._common import ApiKey, ApiUrl, JsonOutput, ProfileRef, Sandbox, not_implemented

Name = Annotated[str | None, typer.Argument(help="Deployment name (default: the only active one).")]


def offers(
    profile: ProfileRef,
    limit: Annotated[int, typer.Option(help="How many offers to show.")] = 10,
    max_price: Annotated[float | None, typer.Option(help="Price cap in $/h.")] = None,
    json_output: JsonOutput = False,
    api_key: ApiKey = None,
    api_url: ApiUrl = None,
    sandbox: Sandbox = False,
) -> None:
    """Show the ranked offers that match a profile."""
    not_implemented("offers")
