"""Options shared by several commands, and the error edge every command runs behind.

Also the three things every command's output goes through, so that a closed pipe
(``glmdeploy logs NAME | head -1``) ends the command quietly instead of as a crash: ``say`` (stderr),
``emit_json`` (stdout) and ``console`` (rich tables and spinners).
"""

from __future__ import annotations

import functools
import json
import math
import os
import sys
from collections.abc import Callable, Sequence
from typing import IO, TYPE_CHECKING, Annotated, Any, NoReturn, ParamSpec, TypeVar

import typer
import typer.core

from glmdeploy.completion import profile_names

if TYPE_CHECKING:
    from rich.console import Console

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


def endpoint_target(name: str | None, url: str | None, *, api_key: str | None, model: str | None, trust: Any,
                    purpose: str, engine: str | None = None, engine_option: bool = False) -> Any:
    """The ``smoke.Target`` a command talks to: ``--url`` (with its --api-key/--model/--engine), or the
    deployment NAME (its endpoint, key and pin from the state DB). ``purpose`` ends the "has no
    endpoint to ..." line; ``engine_option``: the command has --engine, so the usage line names it."""
    from glmdeploy.errors import UsageError
    from glmdeploy.smoke import Target

    if url is not None:
        if name is not None:
            raise UsageError("give either a deployment NAME or --url, not both")
        return Target.from_url(url, api_key=api_key, model=model, engine=engine, trust=trust)
    if model is not None or engine is not None:
        options = "--model and --engine go" if engine_option else "--model goes"
        raise UsageError(f"{options} with --url; a deployment knows its own")
    from glmdeploy.state import StateStore

    with StateStore.open() as store:
        deployment = store.resolve(name)
    if not deployment.is_active or not deployment.endpoint:
        raise UsageError(f"deployment {deployment.name!r} has no endpoint to {purpose} (status {deployment.status})")
    if deployment.status != "ready":
        say(f"warning: deployment {deployment.name!r} is {deployment.status}, not ready")
    return Target.from_deployment(deployment)


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
ProfileRef = Annotated[
    str,
    typer.Option("--profile", "-p", help="Profile name or path to a profile YAML.", autocompletion=profile_names),
]


class OutputClosed(KeyboardInterrupt):
    """Whoever read this command's output has gone away: stdout or stderr is a closed pipe (EPIPE).

    A ``KeyboardInterrupt`` on purpose. Nobody is listening any more, as after a hang-up: a command that
    has rented something (``up --json | head -1``) tears it down on its interrupt path, and no
    ``except Exception`` on the way mistakes it for an ordinary error. ``handles_errors`` ends the
    command quietly with ``EXIT_OUTPUT_CLOSED``.
    """


def _silence(stream: IO[str] | None) -> None:
    """Point a closed pipe's file descriptor at /dev/null, so later writes and the flush at exit succeed
    instead of failing again (Python would print "Exception ignored ... BrokenPipeError" at exit)."""
    try:
        fd = stream.fileno() if stream is not None else -1
    except (AttributeError, OSError, ValueError):  # not a real file (a test runner's buffer)
        return
    if fd < 0:
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, fd)
    finally:
        os.close(devnull)


def output_closed(stream: IO[str] | None) -> NoReturn:
    _silence(stream)
    raise OutputClosed from None


def say(message: str) -> None:
    """Human-facing text: always stderr, so stdout stays clean for --json."""
    try:
        print(message, file=sys.stderr, flush=True)
    except BrokenPipeError:
        output_closed(sys.stderr)


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
    try:
        sys.stdout.write(json.dumps(data, indent=None, default=str) + "\n")
        sys.stdout.flush()
    except BrokenPipeError:
        output_closed(sys.stdout)


def console(*, stderr: bool = False, **options: Any) -> Console:
    """A rich Console whose closed pipe raises ``OutputClosed``.

    rich's own handling raises ``SystemExit(1)``, which no cleanup path sees: ``up 2>&1 | head``
    would exit with the instance still billing.
    """
    from rich.console import Console as RichConsole

    class _Console(RichConsole):
        def on_broken_pipe(self) -> None:
            output_closed(self.file)

    return _Console(stderr=stderr, **options)


def handles_errors(func: Callable[P, R]) -> Callable[P, R]:
    """Turn glmdeploy errors into one line on stderr and the documented exit code."""

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        from glmdeploy.errors import EXIT_HUNG_UP, EXIT_INTERNAL, EXIT_INTERRUPTED, EXIT_OUTPUT_CLOSED, GlmdeployError

        try:
            return func(*args, **kwargs)
        except typer.Exit:
            raise
        except GlmdeployError as exc:
            _report(f"{paint('error:', '1;31')} {exc}", f"hint: {exc.hint}" if exc.hint else None)
            raise typer.Exit(exc.exit_code) from None
        except OutputClosed:
            raise typer.Exit(EXIT_OUTPUT_CLOSED) from None
        except BrokenPipeError:  # a plain print() to a closed stdout
            _silence(sys.stdout)
            raise typer.Exit(EXIT_OUTPUT_CLOSED) from None
        except (KeyboardInterrupt, typer.Abort) as exc:  # Abort: Ctrl-C or EOF at a confirmation prompt
            # An InterruptGuard's SignalReceived carries the signal: a hang-up exits 129, the rest 130.
            import signal

            hung_up = getattr(exc, "signum", None) == signal.SIGHUP
            _report("hung up (SIGHUP)" if hung_up else "interrupted")
            raise typer.Exit(EXIT_HUNG_UP if hung_up else EXIT_INTERRUPTED) from None
        except Exception as exc:
            if os.environ.get("GLMDEPLOY_DEBUG"):
                raise
            _report(f"internal error: {type(exc).__name__}: {exc} (a bug: please report it at {ISSUES_URL};"
                    " set GLMDEPLOY_DEBUG=1 for the traceback)")
            raise typer.Exit(EXIT_INTERNAL) from None

    return wrapper


def _report(*lines: str | None) -> None:
    """The last words of a failing command; a closed stderr must not replace its exit code."""
    try:
        for line in lines:
            if line:
                say(line)
    except OutputClosed:
        pass


class OneLineErrors(typer.core.TyperGroup):
    """The root command group: click's usage errors in glmdeploy's one-line ``error:`` style.

    Click prints a usage block, a blank line and ``Error: ...``; glmdeploy prints every error as one
    ``error:`` line, and a bad option is no different. A closed pipe while click prints help is quiet too.
    """

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        windows_expand_args: bool = True,
        **extra: Any,
    ) -> Any:
        def run() -> Any:
            return super(OneLineErrors, self).main(
                args, prog_name, complete_var, False, windows_expand_args, **extra
            )

        if not standalone_mode:
            return run()
        from glmdeploy.errors import EXIT_INTERRUPTED, EXIT_OUTPUT_CLOSED, EXIT_USAGE

        try:
            result = run()
        except typer.TyperException as exc:  # click's errors (typer vendors click)
            if type(exc).__name__ == "NoArgsIsHelpError":  # bare `glmdeploy` or `glmdeploy sandbox`: help
                try:
                    exc.show()  # type: ignore[attr-defined]
                except BrokenPipeError:
                    _silence(sys.stderr)
            else:
                _report(f"error: {usage_message(exc)}")
            sys.exit(EXIT_USAGE)
        except typer.Abort:
            _report("interrupted")
            sys.exit(EXIT_INTERRUPTED)
        except BrokenPipeError:
            _silence(sys.stdout)
            sys.exit(EXIT_OUTPUT_CLOSED)
        except SystemExit as exc:
            # typer's own EPIPE handling (--help or --version into a closed pipe) exits 1, "a bug".
            if exc.code == 1 and type(sys.stdout).__name__ == "PacifyFlushWrapper":
                sys.exit(EXIT_OUTPUT_CLOSED)
            raise
        # Without standalone mode click returns a command's exit code, or what the command returned.
        sys.exit(result if isinstance(result, int) else 0)


def usage_message(exc: typer.TyperException) -> str:
    """Click's message on one line, and where to read more: ``Invalid value for '--max-price': ...;
    see 'glmdeploy up --help'``."""
    message = " ".join(exc.format_message().split()).rstrip(".")
    ctx = getattr(exc, "ctx", None)
    if ctx is not None:
        message += f"; see '{ctx.command_path} --help'"
    return message


# ----------------------------------------------------------------------------------- number options
# Typer callbacks: a bad number is refused while the command line is parsed, before anything runs, as one
# `error: Invalid value for '--X': ...` line and exit 2. Without them nan, inf, 0 or -1 got as far as the
# price filter or the ranking and came out as "internal error".


def _refuse(value: float, rule: str) -> typer.BadParameter:
    return typer.BadParameter(f"must be {rule}, got {value:g}")


def price_cap(value: float | None) -> float | None:
    """``--max-price``: a positive, finite $/h, and not absurd (see ``ranking.MAX_PRICE_CAP``)."""
    if value is None:
        return None
    from glmdeploy.ranking import MAX_PRICE_CAP

    if not (math.isfinite(value) and value > 0):
        raise _refuse(value, "a positive number of $/h")
    if value > MAX_PRICE_CAP:
        raise _refuse(value, f"at most ${MAX_PRICE_CAP:g}/h, Vast.ai's upper limit for an hourly bid")
    return value


def positive_dollars(value: float | None) -> float | None:
    """``--max-cost``: a positive, finite amount of $."""
    if value is not None and not (math.isfinite(value) and value > 0):
        raise _refuse(value, "a positive number of $")
    return value


def positive_seconds(value: float | None) -> float | None:
    """``--timeout SECONDS``: positive and finite (inf would wait forever, which a timeout exists to prevent)."""
    if value is not None and not (math.isfinite(value) and value > 0):
        raise _refuse(value, "a positive number of seconds")
    return value


def positive_number(value: float | None) -> float | None:
    """A positive, finite factor (``--time-scale``)."""
    if value is not None and not (math.isfinite(value) and value > 0):
        raise _refuse(value, "a positive number")
    return value


def non_negative_ms(value: float | None) -> float | None:
    """A finite, non-negative number of milliseconds (``--ttft-ms``, ``--tpot-ms``)."""
    if value is not None and not (math.isfinite(value) and value >= 0):
        raise _refuse(value, "a number of milliseconds, 0 or more")
    return value


MaxPrice = Annotated[
    float | None,
    typer.Option(
        "--max-price", callback=price_cap, help="Price cap in $/h for the whole instance (default: the profile's)."
    ),
]
