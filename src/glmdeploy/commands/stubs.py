"""Commands whose issues have not landed yet. Each says so and exits 1; none is listed as done.

Replace a stub by moving the command into its own module and registering it in ``cli.py``.
"""

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


def smoke(name: Name = None, json_output: JsonOutput = False) -> None:
    """Run the smoke checks against a deployment or any OpenAI-compatible URL."""
    not_implemented("smoke")


def bench(name: Name = None, json_output: JsonOutput = False) -> None:
    """Load-test an endpoint the way `vllm bench serve` measures it."""
    not_implemented("bench")


def ci(profile: ProfileRef) -> None:
    """One-shot CI job: up, smoke, optional bench, and always destroy."""
    not_implemented("ci")


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
