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

CaCert = Annotated[
    str | None,
    typer.Option(
        "--ca-cert", metavar="PATH", help="With an https --url: trust this CA file (PEM) instead of the system's."
    ),
]
Pin = Annotated[
    str | None,
    typer.Option(
        "--pin", metavar="SHA256",
        help="With an https --url: accept only the certificate with this SHA-256 fingerprint (exit 9 otherwise).",
    ),
]


def endpoint_trust(url: str | None, ca_cert: str | None, pin: str | None) -> Any:
    """The ``EndpointTrust`` of a ``--url`` target from ``--ca-cert``/``--pin`` (None when neither is given)."""
    from glmdeploy.errors import UsageError

    if ca_cert is None and pin is None:
        return None
    if url is None:
        raise UsageError("--ca-cert and --pin go with --url; a deployment's pin is in the state DB")
    if not url.strip().lower().startswith("https://"):
        raise UsageError("--ca-cert and --pin need an https:// --url")
    if ca_cert is not None and pin is not None:
        raise UsageError("give --ca-cert or --pin, not both")
    from glmdeploy.tls import EndpointTrust, normalize_fingerprint

    if ca_cert is not None:
        if not os.path.isfile(ca_cert):
            raise UsageError(f"--ca-cert: no such file: {ca_cert}")
        return EndpointTrust(ca_file=ca_cert)
    assert pin is not None
    return EndpointTrust(fingerprint=normalize_fingerprint(pin))


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
            say(f"error: {exc}")
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
