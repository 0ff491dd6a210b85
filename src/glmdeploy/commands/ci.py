"""``glmdeploy ci`` (issue 5). Not implemented yet: says so and exits 1."""

from __future__ import annotations

from typing import Annotated

import typer

from glmdeploy.commands._common import ProfileRef, not_implemented

Name = Annotated[str | None, typer.Argument(help="Deployment name (default: the only active one).")]


def ci(profile: ProfileRef) -> None:
    """One-shot CI job: up, smoke, optional bench, and always destroy."""
    not_implemented("ci")
