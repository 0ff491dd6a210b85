"""``glmdeploy bench`` (issue 5). Not implemented yet: says so and exits 1."""

from __future__ import annotations

from typing import Annotated

import typer

from glmdeploy.commands._common import JsonOutput, not_implemented

Name = Annotated[str | None, typer.Argument(help="Deployment name (default: the only active one).")]


def bench(name: Name = None, json_output: JsonOutput = False) -> None:
    """Load-test an endpoint the way `vllm bench serve` measures it."""
    not_implemented("bench")
