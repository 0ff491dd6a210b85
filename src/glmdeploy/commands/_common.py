"""Options shared by several commands, and the error edge every command runs behind."""

from __future__ import annotations

import functools
import json
import os
import sys
from collections.abc import Callable
from typing import Annotated, Any, ParamSpec, TypeVar

import typer

P = ParamSpec("P")
R = TypeVar("R")

ISSUES_URL = "https://github.com/glmdeploy/glmdeploy/issues"

JsonOutput = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON on stdout.")]
ApiKey = Annotated[
    str | None,
    typer.Option(
        "--api-key",
        show_default=False,
        # Not envvar=: key discovery reads VAST_API_KEY itself, so errors can say where a key came from.
        help="Vast.ai API key; else $VAST_API_KEY, ~/.config/vastai/vast_api_key, then ~/.vast_api_key.",
    ),
]
ApiUrl = Annotated[
    str | None,
    typer.Option("--api-url", envvar="VAST_URL", show_envvar=True, help="Vast.ai API server."),
]
Sandbox = Annotated[
    bool,
    typer.Option(
        "--sandbox",
        envvar="GLMDEPLOY_SANDBOX",
        show_envvar=True,
        help="Use the local sandbox (started if needed) instead of Vast.ai; no key needed.",
    ),
]
ProfileRef = Annotated[str, typer.Option("--profile", "-p", help="Profile name or path to a profile YAML.")]


def say(message: str) -> None:
    """Human-facing text: always stderr, so stdout stays clean for --json."""
    print(message, file=sys.stderr, flush=True)


def paint(text: str, sgr: str, stream: Any = None) -> str:
    """``text`` in an ANSI colour when ``stream`` (stderr) is a terminal, plain under NO_COLOR or a pipe."""
    out = sys.stderr if stream is None else stream
    if os.environ.get("NO_COLOR") or os.environ.get("TERM") == "dumb" or not out.isatty():
        return text
    return f"\x1b[{sgr}m{text}\x1b[0m"


def check_launch(profile: Any, *, force: bool | None) -> None:
    """Refuse, before anything is rented, a launch the pinned engine would refuse (exit 2, one line).

    ``force=None`` (plan, profiles validate): only refused flags stop it; an unknown version or an engine
    that cannot load the model is a warning. ``force=False`` (up, ci): those refuse too. ``force=True``:
    everything is a warning; the user rents knowing the engine may exit at launch.
    """
    from glmdeploy.engines.checks import check_launch as run_check
    from glmdeploy.errors import UsageError

    check = run_check(profile)
    refusals: list[str] = []
    warnings: list[str] = []
    if check.flags_refusal:
        refusals.append(check.flags_refusal)
    for text in (check.model_refusal, None if check.image.floating else check.version_warning):
        if text:
            (warnings if force is None else refusals).append(text)
    if check.image.floating and check.version_warning:
        warnings.append(check.version_warning)
    if refusals and not force:
        tail = "; --force rents anyway" if force is False else ""
        raise UsageError(refusals[0] + tail)
    for text in [*refusals, *warnings]:
        say(f"warning: {text}")


def emit_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=None, default=str) + "\n")
    sys.stdout.flush()


def handles_errors(func: Callable[P, R]) -> Callable[P, R]:
    """Turn glmdeploy errors into one line on stderr and the documented exit code."""

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        from glmdeploy.errors import EXIT_HUNG_UP, EXIT_INTERNAL, EXIT_INTERRUPTED, GlmdeployError

        try:
            return func(*args, **kwargs)
        except typer.Exit:
            raise
        except GlmdeployError as exc:
            say(f"{paint('error:', '1;31')} {exc}")
            if exc.hint:
                say(f"hint: {exc.hint}")
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt as exc:
            # An InterruptGuard's SignalReceived carries the signal: a hang-up exits 129, the rest 130.
            import signal

            hung_up = getattr(exc, "signum", None) == signal.SIGHUP
            say("hung up (SIGHUP)" if hung_up else "interrupted")
            raise typer.Exit(EXIT_HUNG_UP if hung_up else EXIT_INTERRUPTED) from None
        except Exception as exc:
            if os.environ.get("GLMDEPLOY_DEBUG"):
                raise
            say(f"internal error: {type(exc).__name__}: {exc} (a bug: please report it at {ISSUES_URL};"
                " set GLMDEPLOY_DEBUG=1 for the traceback)")
            raise typer.Exit(EXIT_INTERNAL) from None

    return wrapper
