"""The glmdeploy command line: wiring only. Commands live in ``glmdeploy.commands``."""

from __future__ import annotations

from typing import Annotated

import typer

from glmdeploy import __version__
from glmdeploy.commands import (
    bench,
    chat,
    ci,
    completion,
    deployments,
    offers,
    plan,
    profiles,
    sandbox,
    scale,
    smoke,
    up,
)
from glmdeploy.commands._common import OneLineErrors
from glmdeploy.completion import enable_if_requested

app = typer.Typer(
    name="glmdeploy",
    cls=OneLineErrors,
    help="Serve GLM-4.7-Flash on rented Vast.ai GPUs: tested, secured, and torn down when you say so.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


def _version(value: bool) -> None:
    if value:
        print(f"glmdeploy {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version and exit.")
    ] = False,
) -> None:
    """Serve GLM-4.7-Flash on rented Vast.ai GPUs."""


app.add_typer(profiles.app, name="profiles")
app.command("plan")(plan.plan)
app.command("offers")(offers.offers)
app.command("up")(up.up)
app.command("list")(deployments.list_deployments)
app.command("status")(deployments.status)
app.command("logs")(deployments.logs)
app.command("env")(deployments.env)
app.command("destroy")(deployments.destroy)
app.command("scale")(scale.scale)
app.command("smoke")(smoke.smoke)
app.command("bench")(bench.bench)
app.command("chat")(chat.chat)
app.command("ci")(ci.ci)
app.add_typer(sandbox.sandbox_app, name="sandbox")
app.command("completion")(completion.completion)


def main() -> None:
    enable_if_requested()  # a TAB press from the script `glmdeploy completion SHELL` printed
    app(prog_name="glmdeploy")  # not "python -m glmdeploy" in messages that say what to run
