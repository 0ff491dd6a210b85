"""``glmdeploy ci``: the one-shot CI job — up, smoke, optional bench, and always destroy (issue 5).

Whatever happens (a failed phase, a timeout, SIGTERM from the CI runner, the cost limit), the
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
    emit_json,
    handles_errors,
    positive_dollars,
    say,
)
from glmdeploy.errors import DeploymentFailed

if TYPE_CHECKING:
    from collections.abc import Callable

    from glmdeploy.deploy import Deployer
    from glmdeploy.junit import Case
    from glmdeploy.smoke import CheckResult

# Beyond the readiness timeout, how long the host watchdog lets an instance live: smoke and bench
# fit easily, and a CI runner killed mid-job leaks at most this much.
TTL_MARGIN_S = 1800.0


class CostLimitReached(DeploymentFailed):
    """The accrued cost (dph_total x time rented) reached ``--max-cost``."""

    code = "cost_limit"


class CostGuard:
    """Raises ``CostLimitReached`` once the rented instance has cost ``max_cost`` dollars.

    Time is the provider's: the sandbox's clock runs ``scale`` times faster than the wall clock.
    """

    def __init__(self, max_cost: float | None, scale: float, clock: Callable[[], float]) -> None:
        self.max_cost = max_cost
        self.scale = scale
        self.clock = clock
        self.dph: float | None = None
        self.since: float | None = None

    def track(self, deployer: Deployer) -> None:
        attempt = deployer.current
        if attempt is not None and attempt.rented_at is not None:
            self.dph = attempt.offer.dph_total
            self.since = attempt.rented_at

    def cost(self) -> float:
        if self.dph is None or self.since is None:
            return 0.0
        return self.dph * (self.clock() - self.since) / self.scale / 3600

    def check(self) -> None:
        if self.max_cost is not None and self.cost() >= self.max_cost:
            raise CostLimitReached(
                f"cost limit reached: ${self.cost():.3f} accrued at ${self.dph or 0:.3f}/h (--max-cost "
                f"${self.max_cost:.2f}); tearing down"
            )


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
    name: Annotated[str | None, typer.Option(help="Deployment name.")] = None,
    max_price: MaxPrice = None,
    timeout: Annotated[str | None, typer.Option(help="Give up if not ready after this long, e.g. 45m.")] = None,
    ttl: Annotated[
        str | None, typer.Option(help="Host watchdog lifetime (default: the readiness timeout + 30m).")
    ] = None,
    max_attempts: Annotated[int, typer.Option(min=1, max=10, help="Machines to try before giving up.")] = 1,
    json_output: JsonOutput = False,
    api_key: ApiKey = None,
    api_url: ApiUrl = None,
    sandbox: Sandbox = False,
) -> None:
    """One-shot CI job: up, smoke, optional bench, and always destroy."""
    import signal
    import time

    from glmdeploy.connect import connect
    from glmdeploy.deploy import Deployer, StepFailed, UpRequest
    from glmdeploy.durations import parse_duration
    from glmdeploy.errors import (
        EXIT_DEPLOY_FAILED,
        EXIT_UNREACHABLE,
        GlmdeployError,
        Interrupted,
        SmokeFailed,
        UsageError,
    )
    from glmdeploy.junit import Suite, write
    from glmdeploy.profiles import load_profile
    from glmdeploy.progress import JsonEvents, TerminalEvents
    from glmdeploy.state import StateStore

    prof = load_profile(profile)
    timeout_s = parse_duration(timeout, option="--timeout") if timeout else prof.readiness.timeout_s
    ttl_s = parse_duration(ttl, option="--ttl") if ttl else timeout_s + TTL_MARGIN_S
    if max_cost is not None and not max_cost > 0:
        raise UsageError(f"--max-cost must be positive, not {max_cost:g}")
    if junit is not None and not Path(junit).parent.is_dir():
        raise UsageError(f"--junit: folder {Path(junit).parent} does not exist")

    conn = connect(api_key, api_url, sandbox)
    events: JsonEvents | TerminalEvents = JsonEvents() if json_output else TerminalEvents()
    guard = CostGuard(max_cost, conn.pacing.scale, time.monotonic)
    store = StateStore.open()
    deployer = Deployer(client=conn.client, store=store, events=events, confirm=lambda _: True, pacing=conn.pacing)

    def guarded_sleep(seconds: float) -> None:
        guard.track(deployer)
        guard.check()
        time.sleep(seconds)

    deployer.sleep = guarded_sleep
    cases: list[Case] = []
    suites: list[Suite] = []
    outcome: dict[str, Any] = {"event": "ci", "profile": prof.name, "passed": False}
    exit_code = 0
    error: GlmdeployError | None = None

    def on_sigterm(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    deployment = None
    phase = "deploy"
    started = time.monotonic()
    try:
        deployment = deployer.up(
            UpRequest(
                profile=prof,
                api_url=conn.api_url,
                name=name,
                max_price=max_price,
                ttl_s=ttl_s,
                timeout_s=timeout_s,
                max_attempts=max_attempts,
                smoke=False,
            )
        )
        guard.dph, guard.since = deployment.dph_total, guard.since or started
        cases.append(_case("deploy", started, f"ready at {deployment.endpoint}"))
        outcome["deployment"] = deployment.public()

        phase = "smoke"
        from glmdeploy.smoke import smoke_endpoint

        def on_check(result: CheckResult) -> None:
            events.note(f"smoke {result.name}: {result.status}: {result.detail}")
            guard.check()

        t = time.monotonic()
        report = smoke_endpoint(
            deployment.endpoint or "",
            deployment.endpoint_key(),
            model=deployment.model,
            profile=deployment.profile_snapshot,
            on_result=on_check,
        )
        suites.append(report.junit_suite())
        outcome["smoke"] = report.to_json()
        cases.append(_case("smoke", t, report.summary(), failed=not report.passed))
        report.raise_for_failure()

        if bench:
            phase = "bench"
            guard.check()
            from glmdeploy.bench import BenchOptions, run_bench

            t = time.monotonic()
            result = run_bench(
                deployment.endpoint or "",
                deployment.endpoint_key(),
                deployment.model or "",
                BenchOptions(num_prompts=bench_prompts, input_len=256, output_len=64, max_concurrency=4),
            )
            outcome["bench"] = result.model_dump(mode="json")
            failed = result.completed == 0
            cases.append(_case("bench", t, f"{result.completed} completed, {result.failed} failed", failed=failed))
            if failed:
                raise SmokeFailed(f"benchmark: no request succeeded ({result.failed} failed)")
        outcome["passed"] = True
    except KeyboardInterrupt:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if deployer.abort("interrupted") == "orphaned":
            from glmdeploy.deploy import ORPHAN_HINT

            error = Interrupted("interrupted: the instance could not be destroyed", hint=ORPHAN_HINT)
        else:
            # After `up` returned, the teardown below destroys the deployment.
            error = Interrupted("interrupted: whatever was rented has been destroyed")
    except GlmdeployError as exc:
        error = exc
        if isinstance(exc, CostLimitReached) and deployer.current is not None:
            deployer.abort(str(exc))
        if isinstance(exc, StepFailed) and exc.excerpt:
            say("log excerpt:\n" + "\n".join(f"  | {line}" for line in exc.excerpt))
    finally:
        signal.signal(signal.SIGTERM, previous)
        # Always destroy: this is the whole point of `ci`.
        if deployment is not None:
            cases.append(_teardown(store, deployment, conn))
        if isinstance(events, TerminalEvents):
            events.close()
        store.close()
        conn.client.close()
    if error is not None:
        cases.append(_case(phase, started, str(error), failed=True))
        outcome.update(error=str(error), phase=phase, code=error.code)
        exit_code = error.exit_code
        if isinstance(error, CostLimitReached):
            exit_code = EXIT_DEPLOY_FAILED
    elif cases and cases[-1].status == "failed":
        outcome.update(passed=False, error=cases[-1].message, phase="destroy")
        exit_code = EXIT_UNREACHABLE  # spec: 4 promises the instance was destroyed; here Vast.ai kept failing
    outcome["cost"] = round(guard.cost(), 4)
    if junit is not None:
        write(Path(junit), [Suite(name="glmdeploy.ci", cases=cases), *suites])
    if json_output:
        emit_json(outcome)
    if error is not None:
        raise error
    if exit_code:
        raise typer.Exit(exit_code)
    if not json_output:
        say(f"ci passed: {prof.name} deployed, smoke-tested{', benchmarked' if bench else ''} and destroyed")


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


def _teardown(store: Any, deployment: Any, conn: Any) -> Case:
    """Destroy and verify; a failure is recorded as orphaned so `destroy --orphans` retries it."""
    import contextlib
    import time

    from glmdeploy.errors import GlmdeployError
    from glmdeploy.lifecycle import destroy_and_verify

    t = time.monotonic()
    if deployment.instance_id is None:
        return _case("destroy", t, "nothing was rented")
    try:
        destroy_and_verify(conn.client, deployment.instance_id, sleep=lambda s: time.sleep(s * conn.pacing.scale))
    except GlmdeployError as exc:
        from glmdeploy.state import DeploymentReleased

        # Another process (a concurrent `destroy`) may have closed the record meanwhile.
        with contextlib.suppress(DeploymentReleased):
            store.update(deployment.id, status="orphaned", error=f"ci teardown failed: {exc}")
        say(f"error: could not destroy instance {deployment.instance_id}: {exc}; run 'glmdeploy destroy --orphans'")
        return _case("destroy", t, str(exc), failed=True)
    store.mark_destroyed(deployment.id, status="destroyed")  # idempotent: the first outcome stands
    say(f"destroyed instance {deployment.instance_id}")
    return _case("destroy", t, f"instance {deployment.instance_id} destroyed")
