"""``glmdeploy bench``: load-test a deployment (or any OpenAI chat URL) the way ``vllm bench serve`` measures.

The load generator and the metrics live in ``glmdeploy.bench``; this module resolves the target, shows
progress on stderr and prints the result block (or JSON). Exit codes: 0 when the run completed (failed
requests are reported, not fatal), 2 for bad options, 5 when not a single request succeeded, 7 when not a
single request could even connect.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from glmdeploy.commands._common import (
    CaCert,
    JsonOutput,
    Pin,
    emit_json,
    endpoint_trust,
    handles_errors,
    positive_seconds,
    say,
)
from glmdeploy.completion import deployment_names

if TYPE_CHECKING:
    from glmdeploy.bench import BenchOptions, BenchResult

Name = Annotated[
    str | None,
    typer.Argument(help="Deployment name (default: the only active one).", autocompletion=deployment_names),
]
# The workload is built in memory before the first send: a billion prompts, or prompts of a billion words,
# would end as a MemoryError. No model here takes more than 202,752 tokens of context (catalog.py).
MAX_PROMPTS = 100_000
MAX_LEN_TOKENS = 262_144


@handles_errors
def bench(
    name: Name = None,
    url: Annotated[
        str | None, typer.Option("--url", help="OpenAI base URL (…/v1) to bench instead of a deployment.")
    ] = None,
    api_key: Annotated[
        str | None,
        typer.Option(
            "--api-key",
            envvar="OPENAI_API_KEY",
            show_envvar=True,
            show_default=False,
            help="Endpoint key for --url (a deployment's own key is used for NAME).",
        ),
    ] = None,
    model: Annotated[
        str | None, typer.Option("--model", help="Model name to request (default: the deployment's, or /models).")
    ] = None,
    num_prompts: Annotated[
        int, typer.Option("--num-prompts", min=1, max=MAX_PROMPTS, help="Requests to send.")
    ] = 100,
    input_len: Annotated[
        int,
        typer.Option(
            "--input-len", min=1, max=MAX_LEN_TOKENS, help="Prompt length in words (about one token each)."
        ),
    ] = 1024,
    output_len: Annotated[
        int,
        typer.Option(
            "--output-len",
            min=1,
            max=MAX_LEN_TOKENS,
            help="Tokens to generate per request (max_tokens, ignore_eos).",
        ),
    ] = 128,
    request_rate: Annotated[
        str, typer.Option("--request-rate", help="Requests per second, or 'inf' to send all at once.")
    ] = "inf",
    burstiness: Annotated[
        float,
        typer.Option("--burstiness", help="Gamma shape of the arrival gaps: 1 = Poisson, <1 burstier, >1 steadier."),
    ] = 1.0,
    max_concurrency: Annotated[
        int | None,
        typer.Option("--max-concurrency", min=1, max=MAX_PROMPTS, help="Cap on requests in flight."),
    ] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed for the prompts and the arrival times.")] = 0,
    timeout: Annotated[
        float,
        typer.Option(
            "--timeout", callback=positive_seconds, help="Seconds one request may take before it counts as failed."
        ),
    ] = 600.0,
    output: Annotated[
        Path | None, typer.Option("--output", help="Also write the JSON result to this file.", dir_okay=False)
    ] = None,
    report: Annotated[
        Path | None,
        typer.Option(
            "--report", help="Also write a self-contained HTML report (charts, percentiles) to this file.",
            dir_okay=False,
        ),
    ] = None,
    ca_cert: CaCert = None,
    pin: Pin = None,
    json_output: JsonOutput = False,
) -> None:
    """Load-test an endpoint the way `vllm bench serve` measures it (TTFT, TPOT, ITL, E2EL, throughput).

    Exit 0 when the run completes (failed requests are counted and listed), 2 for bad options, 5 when not a
    single request succeeded.
    """
    import math

    from glmdeploy.bench import BenchOptions, chat_url, first_model, parse_request_rate
    from glmdeploy.errors import SmokeFailed, UsageError

    rate = parse_request_rate(request_rate)
    if math.isnan(burstiness) or burstiness <= 0:
        raise UsageError(f"--burstiness must be a positive number or 'inf', got {burstiness!r}")
    for option, path in (("--output", output), ("--report", report)):
        if path is not None and not path.parent.is_dir():
            raise UsageError(f"{option}: directory {path.parent} does not exist")
    if name is not None and url is not None:
        raise UsageError("give a deployment NAME or --url, not both")
    label: str | None = None
    engine = profile = None
    trust = endpoint_trust(url, ca_cert, pin)
    if url is not None:
        chat_url(url)  # a malformed URL is a usage error before anything is sent
        target, key = url, api_key
    else:
        target, key, served, label, trust, engine, profile = _deployment_target(name)
        model = model or served
    # The pin is checked with one handshake before any request (CertificateMismatch: exit 9).
    context = trust.context(target) if trust is not None else None
    verify = context if not isinstance(context, bool) else None
    if url is not None:
        model = model or first_model(url, key, verify=verify)
    options = BenchOptions(
        num_prompts=num_prompts,
        input_len=input_len,
        output_len=output_len,
        request_rate=rate,
        burstiness=burstiness,
        max_concurrency=max_concurrency,
        seed=seed,
        timeout_s=timeout,
        label=label,
    )
    counted = _replica_counter(label) if url is None else None
    before = counted() if counted is not None else {}
    assert model is not None  # first_model() returns one or raises
    result = _run_with_progress(target, key, model, options, verify)
    if result.completed == 0 and result.errors and all(e.startswith(_CANNOT_CONNECT) for e in result.errors):
        from glmdeploy.bench import shown_url
        from glmdeploy.errors import EndpointUnreachable

        # One line, not a result block of zeros and ten copies of the same connection error.
        raise EndpointUnreachable(f"cannot reach {shown_url(target)}: {result.errors[0]}")

    from glmdeploy.bench import format_summary

    summary = format_summary(result)
    per_replica = ({k: v - before.get(k, 0) for k, v in counted().items()} if counted is not None else None)
    if json_output:
        say(summary)
        emit_json({**result.model_dump(mode="json"), **({"per_replica": per_replica} if per_replica else {})})
    else:
        print(summary, flush=True)
        if per_replica:
            print("requests per replica (SMG metrics): "
                  + ", ".join(f"{k} {v}" for k, v in sorted(per_replica.items())), flush=True)
    for error in result.errors:
        say(f"failed request: {error}")
    if output is not None:
        try:
            output.write_text(result.model_dump_json(indent=2) + "\n")
        except OSError as exc:
            raise UsageError(f"cannot write {output}: {exc.strerror or exc}") from None
    if report is not None:
        from glmdeploy.bench_report import ReportSettings

        write_report(report, result, ReportSettings(target=target, model=model, engine=engine, profile=profile,
                                                    deployment=label, version=_version()))
    if result.completed == 0:
        first = result.errors[0] if result.errors else "no request was sent"
        raise SmokeFailed(f"every request failed ({first})")


_CANNOT_CONNECT = ("ConnectError", "ConnectTimeout")


def _version() -> str:
    from glmdeploy import __version__

    return __version__


def write_report(path: Path, result: BenchResult, settings: Any) -> None:
    """Write the HTML report (``glmdeploy.bench_report``); an unwritable path is one usage error line."""
    from glmdeploy.bench_report import render_report
    from glmdeploy.errors import UsageError

    try:
        path.write_text(render_report(result, settings), encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"cannot write {path}: {exc.strerror or exc}") from None
    say(f"report: {path}")


def _deployment_target(name: str | None) -> tuple[str, str | None, str, str, Any, str | None, str | None]:
    """(endpoint, key, served model, deployment name, TLS trust, engine, profile) of the named or only active
    deployment."""
    from glmdeploy.errors import UsageError
    from glmdeploy.state import StateStore

    with StateStore.open() as store:
        d = store.resolve(name)
    if not d.endpoint or not d.is_active:
        raise UsageError(f"deployment {d.name!r} has no endpoint (status {d.status})")
    from glmdeploy.tls import EndpointTrust

    trust = EndpointTrust(fingerprint=d.tls_fingerprint, certificate_pem=d.tls_certificate)
    engine = (d.profile_snapshot or {}).get("engine", {}).get("kind")
    return d.endpoint, d.endpoint_key(), d.model or "", d.name, trust, engine, d.profile


def _replica_counter(name: str | None) -> Callable[[], dict[str, int]] | None:
    """For a replica group: a function reading SMG's per-replica request counts, by replica name."""
    if name is None:
        return None
    from glmdeploy.gateway import GatewayError, request_counts
    from glmdeploy.replicas import attach
    from glmdeploy.state import StateStore

    with StateStore.open() as store:
        group = store.get(name)
        if not group.is_group:
            return None
        by_worker = {r.gateway_worker_id: r.name for r in store.replicas_of(group.id) if r.gateway_worker_id}
    gateway = attach(group)
    # SMG names a worker by the URL it was given: the guard's loopback forwarder for that replica.
    try:
        names = {w.url: by_worker[w.worker_id] for w in gateway.workers() if w.worker_id in by_worker}
    except GatewayError:
        names = {}

    def read() -> dict[str, int]:
        return {names.get(url, url): n for url, n in request_counts(gateway).items()}

    return read


def _run_with_progress(url: str, key: str | None, model: str, options: BenchOptions,
                       verify: Any = None) -> BenchResult:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from glmdeploy.bench import RequestOutcome, run_bench
    from glmdeploy.commands._common import console as make_console

    console = make_console(stderr=True)
    failed = 0
    with Progress(
        TextColumn("bench"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[failed]} failed"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
        disable=not console.is_terminal,  # a bar in a CI log is noise (and a stray blank line)
    ) as progress:
        task = progress.add_task("bench", total=options.num_prompts, failed=0)

        def done(outcome: RequestOutcome) -> None:
            nonlocal failed
            failed += 0 if outcome.success else 1
            progress.update(task, advance=1, failed=failed)

        return run_bench(url, key, model, options, on_done=done, verify=verify)
