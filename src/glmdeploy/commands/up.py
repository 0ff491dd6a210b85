"""``glmdeploy up``: rent, start, verify and print a ready GLM endpoint (issue 4)."""

from __future__ import annotations

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
    say,
)

if TYPE_CHECKING:
    from glmdeploy.ranking import RankedOffer


@handles_errors
def up(
    profile: ProfileRef,
    name: Annotated[str | None, typer.Option(help="Deployment name (default glm-<profile>-xxxx).")] = None,
    yes: Annotated[
        bool, typer.Option("--yes", "-y", help="Rent the chosen offer without asking (implied by --sandbox).")
    ] = False,
    json_output: JsonOutput = False,
    max_price: MaxPrice = None,
    ttl: Annotated[
        str | None, typer.Option(help="Destroy the instance from inside after this long, e.g. 2h.")
    ] = None,
    timeout: Annotated[str | None, typer.Option(help="Give up if not ready after this long, e.g. 45m.")] = None,
    max_attempts: Annotated[int, typer.Option(min=1, max=10, help="Machines to try before giving up.")] = 1,
    keep_on_failure: Annotated[
        bool, typer.Option(help="Keep a failed instance for debugging (it keeps billing).")
    ] = False,
    context_length: Annotated[int | None, typer.Option(help="Override the profile's context length.")] = None,
    image: Annotated[str | None, typer.Option(help="Override the profile's container image.")] = None,
    no_smoke: Annotated[bool, typer.Option("--no-smoke", help="Skip the smoke test.")] = False,
    force: Annotated[bool, typer.Option(help="Rent even if the planner says it does not fit.")] = False,
    api_key: ApiKey = None,
    api_url: ApiUrl = None,
    sandbox: Sandbox = False,
) -> None:
    """Rent, start, verify and print a ready GLM endpoint."""
    import signal
    import sys

    from glmdeploy.durations import parse_duration
    from glmdeploy.errors import GlmdeployError, Interrupted, UsageError
    from glmdeploy.profiles import load_profile
    from glmdeploy.profiles.model import with_overrides

    prof = with_overrides(load_profile(profile), context_length=context_length, image=image)
    ttl_s = parse_duration(ttl, option="--ttl") if ttl else None
    timeout_s = parse_duration(timeout, option="--timeout") if timeout else None
    interactive = sys.stdin.isatty() and not json_output
    # The sandbox costs nothing, so there is nothing to confirm; real money always needs a yes.
    yes = yes or sandbox
    if not yes and not interactive:
        raise UsageError("refusing to rent without confirmation: no terminal to ask on", hint="pass --yes")

    from glmdeploy.connect import connect
    from glmdeploy.deploy import Deployer, StepFailed, UpRequest
    from glmdeploy.state import StateStore

    conn = connect(api_key, api_url, sandbox)
    from glmdeploy.progress import JsonEvents, TerminalEvents

    events: JsonEvents | TerminalEvents = JsonEvents() if json_output else TerminalEvents()

    def confirm(candidate: RankedOffer) -> bool:
        if yes:
            return True
        if isinstance(events, TerminalEvents):
            events.status.stop()
        o: Any = candidate.offer
        answer = typer.confirm(f"Rent offer {o.id} ({o.num_gpus}x {o.gpu_name}) at ${o.dph_total:.3f}/h?")
        if isinstance(events, TerminalEvents):
            events.status.start()
        return answer

    def on_sigterm(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    store = StateStore.open()
    deployer = Deployer(client=conn.client, store=store, events=events, confirm=confirm, pacing=conn.pacing)
    request = UpRequest(
        profile=prof,
        api_url=conn.api_url,
        name=name,
        max_price=max_price,
        ttl_s=ttl_s,
        timeout_s=timeout_s,
        max_attempts=max_attempts,
        keep_on_failure=keep_on_failure,
        smoke=not no_smoke,
        force=force,
    )
    try:
        deployment = deployer.up(request)
    except KeyboardInterrupt:
        # A second Ctrl-C must not cut the cleanup short.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        left = deployer.abort("interrupted")
        if json_output:
            emit_json({"event": "failed", "error": "interrupted", "phase": "interrupted", "code": "interrupted"})
        if left == "orphaned":
            from glmdeploy.deploy import ORPHAN_HINT

            raise Interrupted("interrupted: the instance could not be destroyed", hint=ORPHAN_HINT) from None
        raise Interrupted("interrupted: whatever was rented has been destroyed") from None
    except GlmdeployError as exc:
        if json_output:
            where = exc.phase if isinstance(exc, StepFailed) else deployer.phase_now
            phase = where.value if where is not None else None
            emit_json({"event": "failed", "error": str(exc), "phase": phase, "code": exc.code})
        if isinstance(exc, StepFailed) and exc.excerpt:
            say("log excerpt:\n" + "\n".join(f"  | {line}" for line in exc.excerpt))
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)
        if isinstance(events, TerminalEvents):
            events.close()
        store.close()
        conn.client.close()
    if json_output:
        emit_json({"event": "ready", "deployment": deployment.public()})
        return
    print(f"ready: {deployment.name}")
    print(f"  endpoint: {deployment.endpoint}")
    print(f"  model:    {deployment.model}")
    print(f"  cost:     ${deployment.dph_total or 0:.3f}/h until 'glmdeploy destroy {deployment.name}'")
    print("  use it:")
    print(f"    eval \"$(glmdeploy env {deployment.name})\"")
    print('    curl "$OPENAI_BASE_URL/chat/completions" -H "Authorization: Bearer $OPENAI_API_KEY" \\')
    print('      -H "Content-Type: application/json" \\')
    print(f'      -d \'{{"model": "{deployment.model}", "messages": [{{"role": "user", "content": "Hello"}}]}}\'')
