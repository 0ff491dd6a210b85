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
    check_launch,
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
        str | None,
        typer.Option(
            help="Host watchdog: the instance destroys itself after this long, e.g. 2h (default: the readiness "
            "timeout + 30m; 'none' to opt out)."
        ),
    ] = None,
    timeout: Annotated[str | None, typer.Option(help="Give up if not ready after this long, e.g. 45m.")] = None,
    max_attempts: Annotated[int, typer.Option(min=1, max=10, help="Machines to try before giving up.")] = 1,
    keep_on_failure: Annotated[
        bool, typer.Option(help="Keep a failed instance for debugging (it keeps billing).")
    ] = False,
    context_length: Annotated[int | None, typer.Option(help="Override the profile's context length.")] = None,
    image: Annotated[str | None, typer.Option(help="Override the profile's container image.")] = None,
    no_smoke: Annotated[bool, typer.Option("--no-smoke", help="Skip the smoke test.")] = False,
    force: Annotated[
        bool,
        typer.Option(
            help="Rent even if the planner says it does not fit, the image's version is not known, cannot load "
            "the model or refuses a flag, or with a --ttl below the timeout."
        ),
    ] = False,
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run", help="Print the offer it would rent, the whole onstart script and the plan; rent nothing."
        ),
    ] = False,
    api_key: ApiKey = None,
    api_url: ApiUrl = None,
    sandbox: Sandbox = False,
    replicas: Annotated[
        int,
        typer.Option(min=1, help="Replicas on separate machines behind one SMG gateway (needs glmdeploy[gateway])."),
    ] = 1,
    allow_fewer: Annotated[
        bool, typer.Option(help="With --replicas: start with as many replicas as there are machines.")
    ] = False,
    gateway_host: Annotated[
        str, typer.Option(help="With --replicas: address the gateway listens on (0.0.0.0 exposes it).")
    ] = "127.0.0.1",
    gateway_port: Annotated[
        int | None, typer.Option(min=1, max=65535, help="With --replicas: the gateway's port (default: a free one).")
    ] = None,
) -> None:
    """Rent, start, verify and print a ready GLM endpoint."""
    import sys

    from glmdeploy.durations import parse_duration
    from glmdeploy.errors import Declined, GlmdeployError, UsageError
    from glmdeploy.paths import ensure_home
    from glmdeploy.profiles import load_profile
    from glmdeploy.profiles.model import with_overrides

    ensure_home()  # an unusable state dir is one line, before any warning or request
    group_spec = None
    if replicas > 1:
        from glmdeploy.gateway import check_port_free, smg_binary
        from glmdeploy.replicas import GroupSpec

        smg_binary()  # a missing gateway is one line naming the install command, before anything else
        if gateway_port is not None:
            check_port_free(gateway_host, gateway_port)
        group_spec = GroupSpec(replicas=replicas, allow_fewer=allow_fewer, gateway_host=gateway_host,
                               gateway_port=gateway_port)
    prof = with_overrides(load_profile(profile), context_length=context_length, image=image)
    check_launch(prof, force=force)
    timeout_s = parse_duration(timeout, option="--timeout") if timeout else None
    from glmdeploy.ttl import NO_TTL_WARNING, resolve_ttl

    ttl_s = resolve_ttl(ttl, timeout_s=timeout_s or prof.readiness.timeout_s, force=force)
    from glmdeploy.planner import plan_profile

    # What the profile and the plan warn about is said before anything asks to rent (issue 13 §4).
    plan = plan_profile(prof)
    refuse_known_failures(prof, force=force)
    for text in prof.warnings:
        say(f"warning: profile {prof.name}: {text}")
    for text in plan.warnings:
        say(f"warning: plan: {text}")
    interactive = sys.stdin.isatty() and not json_output
    # The sandbox costs nothing, so there is nothing to confirm; real money always needs a yes.
    yes = yes or sandbox

    from glmdeploy.connect import connect
    from glmdeploy.deploy import Deployer, StepFailed, UpRequest
    from glmdeploy.ownership import rental_owner
    from glmdeploy.state import StateStore

    # Before anything touches Vast.ai, in this order: a name clash, a missing key, a refused
    # confirmation (then the Deployer checks the key itself with one call, before searching).
    if name is not None:
        with StateStore.open() as names:
            names.check_name_free(name)
    conn = connect(api_key, api_url, sandbox)
    if dry_run:
        try:
            _dry_run(conn, prof, plan, name=name, max_price=max_price, ttl_s=ttl_s, json_output=json_output)
        finally:
            conn.client.close()
        return
    if not yes and not interactive:
        conn.client.close()
        raise UsageError("refusing to rent without confirmation: no terminal to ask on", hint="pass --yes")
    if ttl_s is None:
        say(NO_TTL_WARNING)
    from glmdeploy.progress import JsonEvents, TerminalEvents

    events: JsonEvents | TerminalEvents = JsonEvents() if json_output else TerminalEvents()

    def confirm(candidate: RankedOffer) -> bool:
        if yes:
            return True
        if isinstance(events, TerminalEvents):
            events.pause()
        try:
            answer = typer.confirm(rent_question(candidate, ttl_s))
        except typer.Abort:
            # click turns Ctrl-C (and the guard's signals) at a prompt into Abort: nothing was rented.
            if guard.received is not None:
                raise SignalReceived(guard.received) from None
            raise KeyboardInterrupt from None
        if isinstance(events, TerminalEvents):
            events.resume()
        return answer

    from glmdeploy.teardown import InterruptGuard, SignalReceived

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
        owner=rental_owner(store.path.parent),
    )
    guard = InterruptGuard()
    deployer.shield = guard.shielded
    try:
        with guard:
            try:
                if group_spec is None:
                    deployment = deployer.up(request)
                else:
                    from glmdeploy.replicas import up_group

                    deployment = up_group(deployer, request, group_spec, log_dir=store.path.parent)
            except KeyboardInterrupt:
                # Ctrl-C, SIGTERM or SIGHUP: destroy what was rented; a second signal must not cut that short.
                guard.closing()
                interrupted = guard.error(deployer.abort("interrupted" if not guard.hung_up else "hung up (SIGHUP)"))
                if json_output:
                    emit_json({"event": "failed", "error": interrupted.code, "phase": "interrupted",
                               "code": interrupted.code})
                raise interrupted from None
    except Declined as exc:
        # An answer, not an interruption and not a failure.
        if json_output:
            emit_json({"event": "declined", "message": str(exc)})
        say(str(exc))
        raise typer.Exit(exc.exit_code) from None
    except GlmdeployError as exc:
        if json_output and not guard.received:
            where = exc.phase if isinstance(exc, StepFailed) else deployer.phase_now
            phase = where.value if where is not None else None
            failed = {"event": "failed", "error": str(exc), "phase": phase, "code": exc.code}
            if isinstance(exc, StepFailed):
                failed["failure"] = exc.kind  # the failure's name: argparse_error, manifest_unknown, ...
            emit_json(failed)
        if isinstance(exc, StepFailed) and exc.excerpt:
            say("log excerpt:\n" + "\n".join(f"  | {line}" for line in exc.excerpt))
        raise
    finally:
        if isinstance(events, TerminalEvents):
            events.close()
        store.close()
        conn.client.close()
    if group_spec is not None:
        _print_group(deployment, json_output)
        return
    if json_output:
        emit_json({"event": "ready", "deployment": deployment.public()})
        return
    from glmdeploy.invocation import invocation

    tool = invocation()
    print(f"ready: {deployment.name}")
    print(f"  endpoint: {deployment.endpoint}")
    print(f"  model:    {deployment.model}")
    print(f"  cost:     ${deployment.dph_total or 0:.3f}/h until '{tool} destroy {deployment.name}'")
    from glmdeploy import calibration

    kv = calibration.kv_capacity(deployment)
    if kv is not None:
        print("\n".join(calibration.render(kv)))
    print("\n".join(smoke_lines(deployer.smoke_report, tool, deployment.name)))
    if deployment.expires_at is not None:
        print(f"  expires:  {deployment.expires_at.isoformat(timespec='seconds')} (the host watchdog destroys it"
              " then; --ttl to change)")
    else:
        print("  expires:  never (--ttl none): destroy it yourself")
    print("  use it:")
    print(f"    eval \"$({tool} env {deployment.name})\"")
    print('    curl "$OPENAI_BASE_URL/chat/completions" -H "Authorization: Bearer $OPENAI_API_KEY" \\')
    print('      -H "Content-Type: application/json" \\')
    print(f'      -d \'{{"model": "{deployment.model}", "messages": [{{"role": "user", "content": "Hello"}}]}}\'')


def _print_group(group: Any, json_output: bool) -> None:
    """The ready report of a replica group (issue 12): one endpoint, the gateway's."""
    from glmdeploy.replicas import replica_views
    from glmdeploy.state import StateStore

    with StateStore.open() as store:
        views = replica_views(store, group)
    if json_output:
        emit_json({"event": "ready", "deployment": {**group.public(), "replicas": views}})
        return
    print(f"ready: {group.name} ({len(views)} replicas behind the SMG gateway)")
    print(f"  endpoint: {group.endpoint}")
    print(f"  model:    {group.model}")
    for v in views:
        print(f"  replica {v['index']}: instance {v['instance_id']} at {v['endpoint']} (${v['dph_total'] or 0:.3f}/h)")
    print(f"  cost:     ${group.dph_total or 0:.3f}/h in all until 'glmdeploy destroy {group.name}'")
    print("  use it:")
    print(f"    eval \"$(glmdeploy env {group.name})\"")
KNOWN_TO_FAIL = "known to fail"


def refuse_known_failures(profile: Any, *, force: bool) -> None:
    """A profile warning that starts with "known to fail" stops `up` unless --force (docs/profiles.md)."""
    from glmdeploy.errors import UsageError

    for text in profile.warnings:
        if text.strip().lower().startswith(KNOWN_TO_FAIL):
            if not force:
                raise UsageError(f"profile {profile.name} is {text.strip()}", hint="pass --force to rent anyway")
            say(f"warning: renting although profile {profile.name} is {text.strip()} (--force)")


def rent_question(candidate: RankedOffer, ttl_s: float | None) -> str:
    """The rent prompt: the offer, what its first hour costs, how long the download should take, the TTL."""
    import math

    from glmdeploy.durations import human_duration

    o: Any = candidate.offer
    dph = o.dph_total or 0.0
    download = (
        f"download ~{human_duration(candidate.download_minutes * 60)}"
        if math.isfinite(candidate.download_minutes)
        else "download time unknown (no speed listed)"
    )
    ttl = f"TTL {human_duration(ttl_s)}" if ttl_s else "no TTL"
    return (
        f"Rent offer {o.id} ({o.num_gpus}x {o.gpu_name}) at ${dph:.3f}/h: first hour ${dph:.2f}, {download}, {ttl}?"
    )


def _dry_run(conn: Any, prof: Any, plan: Any, *, name: str | None, max_price: float | None, ttl_s: float | None,
             json_output: bool) -> None:
    """`up --dry-run`: search and rank as `up` would, then print what it would rent and run; rents nothing."""
    from glmdeploy.commands.plan import render as render_plan
    from glmdeploy.engines import API_KEY_ENV
    from glmdeploy.market import search_ranked
    from glmdeploy.onstart import VAST_URL_ENV, OnstartOptions, render

    ranked = search_ranked(conn.client, prof, max_price=max_price)
    top = ranked[0] if ranked else None
    deployment = name or f"glm-{prof.name}-xxxx"
    script = render(prof, OnstartOptions(deployment=deployment, ttl_seconds=int(ttl_s) if ttl_s else None))
    masked = "<generated at rent time, shown only by 'env'>"
    env = {f"-p {prof.engine.port}:{prof.engine.port}": "1", **prof.env, API_KEY_ENV: masked,
           VAST_URL_ENV: conn.api_url}
    if json_output:
        o: Any = top.offer if top else None
        emit_json({
            "event": "dry_run",
            "offer": None if o is None else {"id": o.id, "gpu_name": o.gpu_name, "num_gpus": o.num_gpus,
                                             "dph_total": o.dph_total, "inet_down": o.inet_down},
            "image": prof.engine.image,
            "env": env,
            "onstart": script,
            "plan": plan.model_dump(mode="json"),
        })
        return
    if top is None:
        print(f"offer:   none matches profile {prof.name!r} under the cap (up would exit 3)")
    else:
        print(f"offer:   {rent_question(top, ttl_s).removeprefix('Rent offer ').rstrip('?')}")
    print(f"image:   {prof.engine.image}")
    print("env:")
    for key, value in env.items():
        print(f"  {key}={value}")
    print("onstart script:")
    print("\n".join(f"  {line}" for line in script.splitlines()))
    print("plan:")
    print("\n".join(f"  {line}" for line in render_plan(plan).splitlines()))
    print("dry run: nothing was rented")


def smoke_lines(report: Any, tool: str, name: str) -> list[str]:
    """Which smoke checks `up` ran and which it skipped, and why: a pass must not hide an untested feature."""
    from glmdeploy.smoke import CHECK_NAMES

    if report is None:
        return [f"  smoke:    not run (--no-smoke); '{tool} smoke {name}' runs all {len(CHECK_NAMES)} checks"]
    ran = [c.name for c in report.checks if c.status == "passed"]
    lines = [f"  smoke:    passed {', '.join(ran) or 'none'}"]
    for c in report.checks:
        if c.status == "skipped":
            lines.append(f"            skipped {c.name}: {c.detail}")
    done = {c.name for c in report.checks}
    rest = [n for n in CHECK_NAMES if n not in done]
    if rest:
        lines.append(f"            not run by up: {', '.join(rest)} ('{tool} smoke {name}' runs them)")
    return lines
