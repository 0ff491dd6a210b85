"""``glmdeploy sandbox start|stop|status``: the local Vast.ai and engine emulator (docs/sandbox.md)."""

from __future__ import annotations

from typing import Annotated

import typer

from glmdeploy.commands._common import (
    JsonOutput,
    emit_json,
    handles_errors,
    non_negative_ms,
    positive_number,
    say,
)

sandbox_app = typer.Typer(help="The local Vast.ai and engine emulator.", no_args_is_help=True)

Port = Annotated[int, typer.Option("--port", min=0, max=65535, help="Port on 127.0.0.1 (0 = any free port).")]
TimeScale = Annotated[
    float | None,
    typer.Option(
        "--time-scale",
        callback=positive_number,
        help="Real seconds per simulated second (default 0.005: a deploy takes seconds).",
    ),
]
Faults = Annotated[
    str | None, typer.Option("--faults", help="Faults to inject, e.g. 'http429:create=2,retry_after=1;exited=1'.")
]
Seed = Annotated[int, typer.Option("--seed", help="Seed of the offer catalogue and of random faults.")]
Foreground = Annotated[bool, typer.Option("--foreground", help="Serve in this process until Ctrl-C.")]
TtftMs = Annotated[
    float | None,
    typer.Option("--ttft-ms", callback=non_negative_ms, help="Engines' time to first token, real ms (default 20)."),
]
TpotMs = Annotated[
    float | None,
    typer.Option("--tpot-ms", callback=non_negative_ms, help="Engines' time per output token, real ms (default 2)."),
]


def _check(time_scale: float | None, faults: str | None) -> None:
    from glmdeploy.errors import UsageError
    from glmdeploy.sandbox.faults import FaultSpecError, parse

    if time_scale is not None and not time_scale > 0:
        raise UsageError(f"--time-scale must be positive, not {time_scale:g}")
    try:
        parse(faults)
    except FaultSpecError as exc:
        raise UsageError(f"--faults: {exc}", hint="see docs/sandbox.md for the fault syntax") from None


@sandbox_app.command("start")
@handles_errors
def sandbox_start(port: Port = 0, time_scale: TimeScale = None, faults: Faults = None, seed: Seed = 0,
                  foreground: Foreground = False, ttft_ms: TtftMs = None, tpot_ms: TpotMs = None) -> None:
    """Start the sandbox in the background (or with --foreground, in this terminal)."""
    import os

    from glmdeploy.errors import GlmdeployError
    from glmdeploy.sandbox import process

    _check(time_scale, faults)
    # A chosen key (docs/sandbox.md) lets a test recognise the "account key" wherever it might leak.
    chosen_key = os.environ.get("GLMDEPLOY_SANDBOX_KEY", "").strip() or None
    config = process.SandboxConfig(port=port, time_scale=time_scale, faults=faults, seed=seed, api_key=chosen_key,
                                   ttft_ms=ttft_ms, tpot_ms=tpot_ms)
    try:
        if foreground:
            existing = process.running()
            if existing is not None:
                say(f"sandbox already running at {existing.url} (pid {existing.pid})")
                return
            process.run_foreground(config)
            return
        info, started = process.start_background(config)
    except process.SandboxError as exc:
        raise GlmdeployError(str(exc)) from None
    if started:
        say(f"sandbox started at {info.url} (pid {info.pid}); API key {info.api_key}")
    else:
        say(f"sandbox already running at {info.url} (pid {info.pid}); API key {info.api_key}")
    say(f"use it with: --api-url {info.url} --api-key {info.api_key}, or --sandbox")


@sandbox_app.command("stop")
@handles_errors
def sandbox_stop() -> None:
    """Stop the sandbox this GLMDEPLOY_HOME started."""
    from glmdeploy.sandbox import process

    stopped = process.stop()
    if stopped is None:
        say("no sandbox running")
    else:
        say(f"sandbox stopped (pid {stopped.pid})")


@sandbox_app.command("status")
@handles_errors
def sandbox_status(json_output: JsonOutput = False) -> None:
    """Whether the sandbox runs, its URL, key and PID."""
    from glmdeploy.sandbox import process

    current = process.status()
    if json_output:
        emit_json(current.model_dump())
        return
    if current.running:
        say(f"sandbox running at {current.url} (pid {current.pid}); API key {current.api_key}")
    else:
        say("no sandbox running")
