"""``glmdeploy ci``: the one-shot CI job — up, smoke, optional bench, and always destroy (issue 5).

Whatever happens (a failed phase, a timeout, SIGTERM or SIGHUP from the CI runner, the cost limit), the
instance is destroyed before the command exits, and a TTL watchdog armed on the host destroys it
even if this process is killed with -9. The exit code is the failing phase's (shared/spec/cli.md).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from glmdeploy.commands._common import (
    ApiKey,
    ApiUrl,
    JsonOutput,
    MaxPrice,
    ProfileRef,
    Sandbox,
    check_launch,
    emit_json,
    handles_errors,
    positive_dollars,
    say,
)

if TYPE_CHECKING:
    from glmdeploy.bench import BenchResult
    from glmdeploy.junit import Case
    from glmdeploy.smoke import CheckResult

@handles_errors
def ci(
    profile: ProfileRef,
    max_cost: Annotated[
        float | None,
        typer.Option(
            callback=positive_dollars, help="Abort and tear down once the rented instance has cost this many $."
        ),
    ] = None,
    junit: Annotated[Path | None, typer.Option(help="Write a JUnit XML report here.")] = None,
    bench: Annotated[bool, typer.Option("--bench", help="Run a short benchmark after the smoke checks.")] = False,
    bench_prompts: Annotated[int, typer.Option(min=1, max=100_000, help="Requests the benchmark sends.")] = 20,
    report_path: Annotated[
        Path | None,
        typer.Option("--report", help="With --bench: also write the benchmark's HTML report here.", dir_okay=False),
    ] = None,
    name: Annotated[str | None, typer.Option(help="Deployment name.")] = None,
    max_price: MaxPrice = None,
    timeout: Annotated[str | None, typer.Option(help="Give up if not ready after this long, e.g. 45m.")] = None,
    ttl: Annotated[
        str | None,
        typer.Option(help="Host watchdog lifetime (default: the readiness timeout + 30m; not shorter, never 'none')."),
    ] = None,
    max_attempts: Annotated[int, typer.Option(min=1, max=10, help="Machines to try before giving up.")] = 1,
    json_output: JsonOutput = False,
    api_key: ApiKey = None,
    api_url: ApiUrl = None,
    sandbox: Sandbox = False,
    replicas: Annotated[
        int,
        typer.Option(min=1, help="Replicas on separate machines behind one SMG gateway, as 'up --replicas N' "
                     "(needs glmdeploy[gateway]); smoke and bench go through the gateway."),
    ] = 1,
) -> None:
    """One-shot CI job: up, smoke, optional bench, and always destroy.

    It rents in its own owner scope, <state dir owner>-ci (or exactly $GLMDEPLOY_OWNER when set), so
    a CI sweep ('destroy --orphans') only ever touches what CI rented: see docs/ci.md.
    """
    import time

    from glmdeploy import __version__
    from glmdeploy.connect import connect
    from glmdeploy.deploy import Deployer, StepFailed, UpRequest
    from glmdeploy.durations import parse_duration
    from glmdeploy.errors import EXIT_UNREACHABLE, GlmdeployError, SmokeFailed, UsageError
    from glmdeploy.junit import Suite, write
    from glmdeploy.ownership import rental_owner
    from glmdeploy.profiles import load_profile
    from glmdeploy.progress import JsonEvents, TerminalEvents
    from glmdeploy.state import StateStore
    from glmdeploy.teardown import InterruptGuard

    group_spec = None
    if replicas > 1:
        from glmdeploy.gateway import smg_binary
        from glmdeploy.replicas import GroupSpec

        smg_binary()  # a missing gateway is one line naming the install command, before anything else
        group_spec = GroupSpec(replicas=replicas)
    prof = load_profile(profile)
    check_launch(prof, force=False)
    timeout_s = parse_duration(timeout, option="--timeout") if timeout else prof.readiness.timeout_s
    from glmdeploy.ttl import resolve_ttl

    ttl_s = resolve_ttl(ttl, timeout_s=timeout_s, allow_none=False)
    if max_cost is not None and not max_cost > 0:
        raise UsageError(f"--max-cost must be positive, not {max_cost:g}")
    if junit is not None and not Path(junit).parent.is_dir():
        raise UsageError(f"--junit: folder {Path(junit).parent} does not exist")
    if report_path is not None and not bench:
        raise UsageError("--report needs --bench (it is the benchmark's report)")
    if report_path is not None and not Path(report_path).parent.is_dir():
        raise UsageError(f"--report: folder {Path(report_path).parent} does not exist")

    if name is not None:  # before anything touches Vast.ai
        with StateStore.open() as names:
            names.check_name_free(name)
    conn = connect(api_key, api_url, sandbox)
    events: JsonEvents | TerminalEvents = JsonEvents() if json_output else TerminalEvents()
    store = StateStore.open()
    ci_owner = rental_owner(store.path.parent, ci=True)
    deployer = Deployer(client=conn.client, store=store, events=events, confirm=lambda _: True, pacing=conn.pacing)
    guard = InterruptGuard()
    deployer.shield = guard.shielded
    cases: list[Case] = []
    suites: list[Suite] = []
    outcome: dict[str, Any] = {"event": "ci", "profile": prof.name, "passed": False}
    bench_result: BenchResult | None = None
    exit_code = 0
    error: GlmdeployError | None = None
    deployment = None
    phase = "deploy"
    started = time.monotonic()
    try:
        with guard:
            try:
                request = UpRequest(
                    profile=prof,
                    api_url=conn.api_url,
                    name=name,
                    max_price=max_price,
                    ttl_s=ttl_s,
                    timeout_s=timeout_s,
                    max_attempts=max_attempts,
                    # A replica of a group runs the full verified path (up's smoke) before it takes traffic.
                    smoke=group_spec is not None,
                    max_cost=max_cost,
                    # CI rents in its own scope, so a CI sweep only ever touches what CI rented.
                    owner=ci_owner,
                )
                if group_spec is None:
                    deployment = deployer.up(request)
                else:
                    from glmdeploy.replicas import up_group

                    deployment = up_group(deployer, request, group_spec, log_dir=store.path.parent)
                    from glmdeploy.replicas import replica_views

                    views = replica_views(store, deployment)
                    cases.extend(_replica_case(store, v) for v in views)
                    outcome["replicas"] = views
                cases.append(_case("deploy", started, f"ready at {deployment.endpoint}"))
                outcome["deployment"] = deployment.public()

                phase = "smoke"
                from glmdeploy.smoke import smoke_endpoint
                from glmdeploy.tls import deployment_trust

                def on_check(result: CheckResult) -> None:
                    events.note(f"smoke {result.name}: {result.status}: {result.detail}")
                    deployer.check_cost()

                t = time.monotonic()
                report = smoke_endpoint(
                    deployment.endpoint or "",
                    deployment.endpoint_key(),
                    model=deployment.model,
                    profile=deployment.profile_snapshot,
                    on_result=on_check,
                    trust=deployment_trust(deployment),
                )
                suites.append(report.junit_suite())
                outcome["smoke"] = report.to_json()
                cases.append(_case("smoke", t, report.summary(), failed=not report.passed))
                report.raise_for_failure()

                if bench:
                    phase = "bench"
                    deployer.check_cost()
                    from glmdeploy.bench import BenchOptions, run_bench

                    t = time.monotonic()
                    context = deployment_trust(deployment).context(deployment.endpoint or "")
                    result = run_bench(
                        deployment.endpoint or "",
                        deployment.endpoint_key(),
                        deployment.model or "",
                        BenchOptions(num_prompts=bench_prompts, input_len=256, output_len=64, max_concurrency=4),
                        verify=None if isinstance(context, bool) else context,
                    )
                    outcome["bench"] = result.model_dump(mode="json")
                    bench_result = result
                    from glmdeploy.bench import format_summary

                    # The figures, where a CI log reader looks: on stderr under --json (stdout is the JSON).
                    if json_output:
                        say(format_summary(result))
                    else:
                        print(format_summary(result), flush=True)
                    if report_path is not None:
                        from glmdeploy.bench_report import ReportSettings
                        from glmdeploy.commands.bench import write_report

                        write_report(Path(report_path), result, ReportSettings(
                            target=deployment.endpoint or "", model=deployment.model or "",
                            engine=prof.engine.kind, profile=prof.name, deployment=deployment.name,
                            version=__version__,
                        ))
                    failed = result.completed == 0
                    cases.append(
                        _case("bench", t, f"{result.completed} completed, {result.failed} failed", failed=failed)
                    )
                    if failed:
                        raise SmokeFailed(f"benchmark: no request succeeded ({result.failed} failed)")
                outcome["passed"] = True
            except KeyboardInterrupt:
                # Ctrl-C, SIGTERM or SIGHUP. Before `up` returned, abort destroys what it rented; after,
                # the teardown below does.
                guard.closing()
                error = guard.error(deployer.abort("interrupted" if not guard.hung_up else "hung up (SIGHUP)"))
            except GlmdeployError as exc:
                # A signal during a teardown is reported as the interrupt it was.
                error = guard.error(deployer.left) if guard.received else exc
                if isinstance(exc, StepFailed) and exc.excerpt:
                    say("log excerpt:\n" + "\n".join(f"  | {line}" for line in exc.excerpt))
            finally:
                # Always destroy: this is the whole point of `ci`. No signal may cut it short.
                guard.closing()
                if deployment is not None:
                    cases.append(_teardown(store, deployment, conn))
                    if guard.received and cases[-1].status == "failed":
                        error = guard.error("orphaned")
                    # The record as the teardown left it (destroyed, or orphaned), not as `up` returned it.
                    final = store.find(deployment.id)
                    outcome["deployment"] = (final or deployment).public()
    finally:
        if isinstance(events, TerminalEvents):
            events.close()
        store.close()
        conn.client.close()
    if error is not None:
        cases.append(_case(phase, started, str(error), failed=True))
        outcome.update(error=str(error), phase=phase, code=error.code)
        exit_code = error.exit_code
    elif cases and cases[-1].status == "failed":
        outcome.update(passed=False, error=cases[-1].message, phase="destroy")
        exit_code = EXIT_UNREACHABLE  # spec: 4 promises the instance was destroyed; here Vast.ai kept failing
    cost = deployer.accrued_cost()
    outcome["cost"] = round(cost, 4)
    if deployer.rented is not None:  # something was rented: say what it cost (the same clock as --max-cost)
        dph = deployer.rented[0]
        say(f"cost of the run: ${cost:.4f}" + (f" at ${dph:.3f}/h" if dph is not None else ""))
    if junit is not None:
        properties = {"cost_usd": f"{cost:.4f}", **(bench_properties(bench_result) if bench_result else {})}
        write(Path(junit), [Suite(name="glmdeploy.ci", cases=cases, properties=properties), *suites])
    if json_output:
        emit_json(outcome)
    if error is not None:
        raise error
    if exit_code:
        raise typer.Exit(exit_code)
    if not json_output:
        what = f"{prof.name} ({replicas} replicas)" if replicas > 1 else prof.name
        say(f"ci passed: {what} deployed, smoke-tested{', benchmarked' if bench else ''} and destroyed")


def bench_properties(result: BenchResult) -> dict[str, str]:
    """The benchmark's figures as JUnit ``<property>`` values (name ``bench.<figure>``, ms or per second)."""
    figures: dict[str, float | int] = {
        "requests_ok": result.completed,
        "requests_failed": result.failed,
        "duration_s": result.duration,
        "request_throughput": result.request_throughput,
        "output_throughput_tok_s": result.output_throughput,
        "total_token_throughput_tok_s": result.total_token_throughput,
    }
    values = result.model_dump()
    for metric in ("ttft", "tpot", "itl", "e2el"):
        for stat, key in (("mean", "mean"), ("p50", "median"), ("p99", "p99")):
            figures[f"{metric}_{stat}_ms"] = values[f"{key}_{metric}_ms"]
    return {f"bench.{k}": (str(v) if isinstance(v, int) else f"{v:.3f}") for k, v in figures.items()}


def _case(name: str, since: float, message: str, *, failed: bool = False) -> Case:
    import time

    from glmdeploy.junit import Case

    return Case(
        name=name,
        classname="glmdeploy.ci",
        time_s=time.monotonic() - since,
        status="failed" if failed else "passed",
        message=message,
    )


def _replica_case(store: Any, view: dict[str, Any]) -> Case:
    """One JUnit case per replica: its own readiness (ready marker, health, smoke), then registered."""
    from glmdeploy.junit import Case

    row = store.get(view["name"])
    took = (row.ready_at - row.created_at).total_seconds() if row.ready_at is not None else 0.0
    return Case(name=f"deploy replica {view['index']}", classname="glmdeploy.ci", time_s=took,
                status="passed" if view["status"] == "ready" else "failed",
                message=f"instance {view['instance_id']} ready at {view['endpoint']}, registered with the gateway")


def _teardown(store: Any, deployment: Any, conn: Any) -> Case:
    """Destroy and verify; a failure is recorded as orphaned so `destroy --orphans` retries it.

    A replica group goes down through ``replicas.destroy_group``: every replica deregistered and
    destroyed through the same ``tear_down``, then the gateway stopped."""
    import time

    from glmdeploy.teardown import tear_down

    t = time.monotonic()
    if deployment.is_group:
        from glmdeploy.replicas import destroy_group

        results = destroy_group(store, conn.client, conn.pacing, store.get(deployment.id), note=say)
        failed = [r for r in results if r["result"] == "failed"]
        if failed:
            say(f"error: {len(failed)} replica(s) could not be destroyed: run 'glmdeploy destroy --orphans'")
            return _case("destroy", t, f"replica(s) {', '.join(r['name'] for r in failed)} not destroyed",
                         failed=True)
        return _case("destroy", t, f"{len(results)} replica(s) destroyed, gateway stopped")
    if deployment.instance_id is None:
        return _case("destroy", t, "nothing was rented")
    result = tear_down(conn.client, deployment.instance_id, pacing=conn.pacing, store=store, deployment=deployment)
    if result.outcome == "orphaned":
        say(f"error: {result.message()}")
        return _case("destroy", t, str(result.error), failed=True)
    say(result.message())
    return _case("destroy", t, f"instance {deployment.instance_id} destroyed")
