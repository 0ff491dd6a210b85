"""``glmdeploy smoke``: named, timed checks of a deployment or any OpenAI-compatible URL (issue 5 §1).

The checks live in ``glmdeploy.smoke``; this module picks the target, shows progress on stderr, and
prints a table (or ``--json``) and writes ``--junit``. Exit 5 when a selected check fails.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from glmdeploy.commands._common import (
    CaCert,
    JsonOutput,
    Pin,
    emit_json,
    endpoint_target,
    endpoint_trust,
    handles_errors,
    positive_seconds,
    say,
)
from glmdeploy.completion import deployment_names

if TYPE_CHECKING:
    from glmdeploy.smoke import CheckResult, SmokeReport

Name = Annotated[
    str | None, typer.Argument(metavar="NAME", help="Deployment name (default: the only active one).",
                                autocompletion=deployment_names)
]
Url = Annotated[
    str | None,
    typer.Option(
        "--url", metavar="URL", help="Smoke this server instead of a deployment: its root or base URL ending in /v1."
    ),
]
EndpointKey = Annotated[
    str | None,
    typer.Option(
        "--api-key",
        metavar="KEY",
        envvar="OPENAI_API_KEY",
        show_envvar=True,
        show_default=False,
        help="The endpoint's API key (with --url; a deployment's own key is used otherwise).",
    ),
]
Model = Annotated[
    str | None,
    typer.Option("--model", metavar="MODEL", help="Model to ask for (with --url; default: the first listed)."),
]
EngineKind = Annotated[
    str | None,
    typer.Option(
        "--engine", metavar="ENGINE", help="Engine behind --url (sglang, vllm, lightllm), for engine-specific probes."
    ),
]
Junit = Annotated[
    Path | None, typer.Option("--junit", metavar="PATH", help="Also write a JUnit XML report to this path.")
]
Skip = Annotated[
    list[str] | None,
    typer.Option("--skip", metavar="CHECK", help="Leave this check out (repeatable, or comma-separated)."),
]
Only = Annotated[
    list[str] | None,
    typer.Option("--only", metavar="CHECK", help="Run only this check (repeatable, or comma-separated)."),
]
Timeout = Annotated[
    float,
    typer.Option(
        "--timeout",
        metavar="SECONDS",
        callback=positive_seconds,
        help="Seconds each check may take in all: connecting, waiting and reading, over all its requests.",
        show_default=True,
    ),
]

_MARK = {"passed": "PASS", "failed": "FAIL", "skipped": "SKIP"}
_STYLE = {"passed": "green", "failed": "bold red", "skipped": "yellow"}


def _names(values: list[str] | None) -> list[str]:
    """Repeated options, each possibly a comma-separated list."""
    return [part.strip() for value in values or [] for part in value.split(",") if part.strip()]


def _deployment_health(name: str | None, report: SmokeReport) -> str | None:
    """After the checks of a deployment: probe its engine once more; an engine that died is recorded
    as unhealthy (``list`` shows it) and the reason returned. A later healthy run clears it."""
    from glmdeploy import deployment_health
    from glmdeploy.engines.health import HealthState
    from glmdeploy.state import StateStore

    with StateStore.open() as store:
        d = store.resolve(name)
        if not d.endpoint or d.status != "ready":
            return None
        with deployment_health.endpoint_client(d) as http:
            reading = deployment_health.probe_deployment(d, http)
        if reading.state is HealthState.UNREACHABLE:
            return None
        reason = deployment_health.unhealthy_reason(reading) if not report.passed else None
        deployment_health.record(store, d, reason)
    return reason


@handles_errors
def smoke(
    name: Name = None,
    url: Url = None,
    api_key: EndpointKey = None,
    model: Model = None,
    engine: EngineKind = None,
    ca_cert: CaCert = None,
    pin: Pin = None,
    json_output: JsonOutput = False,
    junit: Junit = None,
    skip: Skip = None,
    only: Only = None,
    timeout: Timeout = 120.0,
) -> None:
    """Run the smoke checks against a deployment or any OpenAI-compatible URL.

    Checks: health, auth, models, chat, stream, reasoning, tools, max_tokens. Exit 5 if one fails, or if the
    target is not an OpenAI-compatible server; exit 7 if it cannot be reached or never answers (the other
    checks are then not run). A server that answered and then refuses connections (its engine died) fails
    the check that found it (exit 5, the rest not run), and a deployment is then recorded as unhealthy.
    """
    import sys

    from glmdeploy.errors import EndpointUnreachable, SmokeFailed
    from glmdeploy.smoke import run_smoke, select_checks

    only_names, skip_names = _names(only), _names(skip)
    select_checks(only_names, skip_names)  # a typo is exit 2 before anything is sent
    if junit is not None:
        _check_writable(junit)
    trust = endpoint_trust(url, ca_cert, pin)
    target = endpoint_target(name, url, api_key=api_key, model=model, trust=trust, purpose="smoke",
                             engine=engine, engine_option=True)
    progress = _Progress(
        live=sys.stderr.isatty() and not json_output,
        header=f"smoke: {target.label or target.api_base} ({target.engine or 'engine unknown'})",
    )
    try:
        report = run_smoke(
            target, only=only_names, skip=skip_names, timeout=timeout,
            on_start=progress.start, on_result=progress.done,
        )
    finally:
        progress.stop()
    if junit is not None:
        from glmdeploy import junit as junit_xml

        junit_xml.write(junit, [report.junit_suite()])
    unhealthy = _deployment_health(name, report) if url is None else None
    if json_output:
        data = report.to_json()
        if url is None:
            data["health"] = "unhealthy" if unhealthy else ("healthy" if report.passed else None)
            data["health_reason"] = unhealthy
        emit_json(data)
    if report.unreachable:  # one line, not a table of checks that were never run
        also = f"; the deployment is unhealthy: {unhealthy}" if unhealthy else ""
        raise EndpointUnreachable(f"cannot smoke {report.target}: {report.unreachable}{also}")
    if report.not_openai:
        raise SmokeFailed(f"cannot smoke {report.target}: {report.not_openai}")
    if not json_output:
        _print_table(report)
    if not report.passed:
        not_run = [c.name for c in report.failed() if c.detail.startswith("not run: ")]
        failed = ", ".join(c.name for c in report.failed() if c.name not in not_run)
        if report.connection_lost:  # the engine died (or the host went away) after it had answered
            rest = f"; not run: {', '.join(not_run)}" if not_run else ""
            failed += f" ({report.connection_lost}{rest})"
        if unhealthy:
            raise SmokeFailed(f"smoke checks failed: {failed}; the deployment is unhealthy: {unhealthy}")
        raise SmokeFailed(f"smoke checks failed: {failed}")
    if not json_output:
        say(report.summary())


def _check_writable(path: Path) -> None:
    """A report path that cannot be written is bad input, found before the checks run, not after."""
    import os

    from glmdeploy.errors import UsageError

    if path.is_dir():
        raise UsageError(f"--junit {path} is a directory")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot create the directory for --junit {path}: {exc.strerror}") from None
    if not os.access(path.parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise UsageError(f"cannot write --junit {path}: permission denied")


class _Progress:
    """On a terminal, a spinner naming the running check; elsewhere one line per finished check.

    The header (the target) comes before the first line; a run stopped by its first check (a wrong
    target) prints neither, so that it ends as one error line.
    """

    def __init__(self, *, live: bool, header: str) -> None:
        self.status = None
        self.header: str | None = header
        if live:
            from glmdeploy.commands._common import console

            self.status = console(stderr=True).status("")
            self.status.start()

    def start(self, name: str) -> None:
        if self.status is not None:
            self.status.update(f"checking {name}…")  # check names are fixed identifiers, safe as markup

    def done(self, result: CheckResult) -> None:
        if self.status is not None or "stopped" in result.info or result.detail.startswith("not run: "):
            return
        if self.header is not None:
            say(self.header)
            self.header = None
        say(f"{_MARK[result.status]} {result.name} ({result.duration_ms:.0f} ms): {result.detail}")

    def stop(self) -> None:
        if self.status is not None:
            self.status.stop()


def _print_table(report: SmokeReport) -> None:
    from rich.table import Table
    from rich.text import Text

    from glmdeploy.commands._common import console

    # Text, not markup: details quote server output and "[DONE]".
    table = Table(title=Text(f"smoke: {report.target}"), title_justify="left")
    table.add_column("check")
    table.add_column("result")
    table.add_column("time", justify="right")
    table.add_column("detail", overflow="fold")
    for c in report.checks:
        table.add_row(
            Text(c.name), Text(_MARK[c.status], style=_STYLE[c.status]), f"{c.duration_ms:.0f} ms", Text(c.detail)
        )
    console(soft_wrap=False).print(table)
