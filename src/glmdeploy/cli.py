"""The glmdeploy command line: wiring only. Commands live in ``glmdeploy.commands``."""

from __future__ import annotations

from typing import Annotated

import typer

from glmdeploy import __version__
from glmdeploy.commands import profiles, stubs

app = typer.Typer(
    name="glmdeploy",
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
app.command("offers")(stubs.offers)
app.command("up")(stubs.up)
app.command("list")(stubs.list_deployments)
app.command("status")(stubs.status)
app.command("logs")(stubs.logs)
app.command("env")(stubs.env)
app.command("destroy")(stubs.destroy)
app.command("smoke")(stubs.smoke)
app.command("bench")(stubs.bench)
app.command("ci")(stubs.ci)
app.add_typer(stubs.sandbox_app, name="sandbox")


def main() -> None:
    app()
