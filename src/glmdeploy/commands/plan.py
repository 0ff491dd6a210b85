"""``glmdeploy plan``: will the model fit, and with how much context (issue 2)."""

from __future__ import annotations

from typing import Annotated

import typer

from glmdeploy.commands._common import JsonOutput, ProfileRef, handles_errors, not_implemented


@handles_errors
def plan(
    profile: ProfileRef,
    context_length: Annotated[int | None, typer.Option(help="Context length to plan for.")] = None,
    json_output: JsonOutput = False,
) -> None:
    """Estimate per-GPU memory, KV pool and maximum context before renting anything."""
    not_implemented("plan")
