"""``glmdeploy list|status|logs|env|destroy`` (issue 4). Not implemented yet: says so and exits 1."""

from __future__ import annotations

from typing import Annotated

import typer

from glmdeploy.commands._common import JsonOutput, not_implemented

Name = Annotated[str | None, typer.Argument(help="Deployment name (default: the only active one).")]


def list_deployments(
    all_: Annotated[bool, typer.Option("--all", help="Include destroyed deployments.")] = False,
    json_output: JsonOutput = False,
) -> None:
    """List deployments with status, $/h, uptime and cost so far."""
    not_implemented("list")


def status(name: Name = None, json_output: JsonOutput = False) -> None:
    """Live status, endpoint health and cost of a deployment."""
    not_implemented("status")


def logs(name: Name = None) -> None:
    """Engine logs of a deployment, secrets redacted."""
    not_implemented("logs")


def env(name: Name = None) -> None:
    """Print export lines for OPENAI_BASE_URL, OPENAI_API_KEY and MODEL."""
    not_implemented("env")


def destroy(name: Name = None) -> None:
    """Destroy a deployment (idempotent)."""
    not_implemented("destroy")
