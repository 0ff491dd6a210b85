"""``glmdeploy list|status|logs|env|destroy``: managing deployments after ``up`` (issue 4)."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any

import typer

from glmdeploy.commands._common import ApiKey, ApiUrl, JsonOutput, emit_json, handles_errors, paint, say
from glmdeploy.completion import deployment_names
from glmdeploy.tables_options import WideOutput

# Rows that need attention stand out on a terminal (rich drops the colour under NO_COLOR or a pipe).
STATUS_STYLES = {"failed": "red", "orphaned": "bold red", "destroyed": "dim"}

if TYPE_CHECKING:
    from glmdeploy.connect import Connection
    from glmdeploy.errors import GlmdeployError
    from glmdeploy.lifecycle import Foreign, Reconciled
    from glmdeploy.state import Deployment, StateStore

Name = Annotated[
    str | None,
    typer.Argument(help="Deployment name (default: the only active one).", autocompletion=deployment_names),
]
# Unlike up's --sandbox this never starts a sandbox: a new one holds nothing to list or destroy.
SandboxAccount = Annotated[
    bool,
    typer.Option(
        "--sandbox",
        envvar="GLMDEPLOY_SANDBOX",
        show_envvar=True,
        help="Look at the running local sandbox's account instead of Vast.ai's (for other owners' instances).",
    ),
]


def _uptime_hours(d: Deployment) -> float:
    """Hours since the record was made, on the provider's clock: the one it bills by, and the one
    ``up``'s and ``ci``'s cost (and ``--max-cost``) count in. The sandbox's runs 1/time_scale faster."""
    from glmdeploy import ttl
    from glmdeploy.state import utcnow

    end = d.destroyed_at or utcnow()
    return max(0.0, (end - d.created_at).total_seconds() / ttl.clock_scale(d.api_url) / 3600)


def _view(d: Deployment, *, live: str | None = None) -> dict[str, Any]:
    from glmdeploy import ttl
    from glmdeploy.deployment_health import view_fields
    from glmdeploy.state import utcnow

    hours = _uptime_hours(d)
    view = d.public()
    view.update(view_fields(d))
    view["uptime_s"] = round(hours * 3600)
    # Vast bills storage from creation and the GPU from running: price x lifetime is the upper bound.
    view["cost_so_far"] = round((d.dph_total or 0.0) * hours, 4)
    if live is not None:
        view["instance_status"] = live
    # Overdue: the host watchdog should have destroyed it, and Vast.ai still shows it.
    still_there = d.is_active and live is not None and live != "gone"
    view["ttl_overdue"] = ttl.overdue(d.expires_at, utcnow(), still_running=still_there,
                                      scale=ttl.clock_scale(d.api_url))
    view["expires"] = ttl.describe(d.expires_at, utcnow(), is_overdue=view["ttl_overdue"]) if d.is_active else None
    return view


def _reconcile_all(
    store: StateStore, api_key: str | None, api_url: str | None = None, sandbox: bool = False
) -> tuple[list[Reconciled], list[str]]:
    """Reconcile every API server that holds an active deployment, and the account's default one.

    The default server (Vast.ai with the discovered key, or the running sandbox) is checked even
    without local records there: that is where other owners' instances show up. Servers out of
    reach are reported; a missing key only skips the default server.
    """
    from glmdeploy.connect import connect_default, connect_for
    from glmdeploy.errors import MissingApiKey
    from glmdeploy.lifecycle import reconcile

    done: list[Reconciled] = []
    problems: list[str] = []
    seen: set[str | None] = set()
    try:
        default = connect_default(api_key, api_url, sandbox)
    except MissingApiKey:
        default = None
        if not store.active():
            say("note: Vast.ai not checked for instances of other owners: no API key")
    except Exception as exc:  # report and keep going: list must still show the local view
        default = None
        problems.append(f"could not check {api_url or 'Vast.ai'}: {exc}")
    if default is not None:
        seen.add(default.api_url)
        try:
            with default.client:
                done.append(reconcile(store, default.client, default.api_url, time_scale=default.pacing.scale))
        except Exception as exc:
            problems.append(f"could not check {default.api_url}: {exc}")
    for d in store.active():
        if d.api_url in seen:
            continue
        seen.add(d.api_url)
        try:
            conn = connect_for(d, api_key)
            with conn.client:
                done.append(reconcile(store, conn.client, conn.api_url, time_scale=conn.pacing.scale))
        except Exception as exc:  # report and keep going: list must still show the local view
            if _close_sandbox_records(store, d.api_url):
                continue
            problems.append(f"could not check {d.api_url}: {exc}")
    return done, problems


def _close_sandbox_records(store: StateStore, api_url: str | None) -> list[str]:
    """Close every active record of a sandbox that no longer runs (its instances ended with it)."""
    from glmdeploy.lifecycle import close_if_sandbox_gone, sandbox_gone

    if not sandbox_gone(api_url):
        return []
    closed = [d.name for d in store.list() if d.api_url == api_url and close_if_sandbox_gone(store, d)]
    for name in closed:
        say(f"{name}: its sandbox at {api_url} has stopped, and its instance with it; record closed")
    return closed


@handles_errors
def list_deployments(
    all_: Annotated[bool, typer.Option("--all", help="Include destroyed deployments.")] = False,
    json_output: JsonOutput = False,
    output: WideOutput = None,
    api_key: ApiKey = None,
    api_url: ApiUrl = None,
    sandbox: SandboxAccount = False,
) -> None:
    """List deployments with status, $/h, uptime and cost so far (checked against Vast.ai).

    Instances other owners rented on the same account (a teammate's machine, CI) are listed as
    'foreign': read-only, never destroyed by 'destroy --orphans'.
    """
    from glmdeploy.ownership import explicit_owner
    from glmdeploy.state import StateStore

    explicit_owner()  # a bad GLMDEPLOY_OWNER: one error line, exit 2
    with StateStore.open() as store:
        reconciled, problems = _reconcile_all(store, api_key, api_url, sandbox)
        live: dict[str, str] = {}
        orphans = [o for r in reconciled for o in r.orphans]
        foreign = [(r, f) for r in reconciled for f in r.foreign]
        for r in reconciled:
            for label, inst in r.instances.items():
                live[label] = inst.actual_status or "provisioning"
        rows = store.list(include_destroyed=True, replicas=False)
        if any(d.is_group and d.is_active for d in rows):
            from glmdeploy.replicas import end_if_expired

            rows = [end_if_expired(store, d, note=say) for d in rows]
        groups = {d.id: _group_summary(store, d) for d in rows if d.is_group}
    for p in problems:
        say(f"warning: {p}")
    views = [_view(d, live=live.get(d.label)) for d in rows]
    for v in views:
        if v["id"] in groups:
            v.update(groups[v["id"]])
    if json_output:
        emit_json(
            {
                "deployments": views,
                "orphans": [
                    {"instance_id": o.instance_id, "label": o.label, "reason": o.reason, "dph_total": o.dph_total,
                     "deployment": o.deployment.name if o.deployment else None}
                    for o in orphans
                ],
                "foreign": [_foreign_view(r, f) for r, f in foreign],
            }
        )
        return
    from glmdeploy.durations import human_duration
    from glmdeploy.tables import Column, print_table

    columns = [
        Column("name", 9, key=True),
        Column("status", 9),
        Column("$/h", 8, justify="right"),
        Column("spent", 7, justify="right"),
        Column("uptime", 6, justify="right"),
        Column("expires", 4),
        Column("endpoint", 5),
        Column("instance", 3, justify="right"),
        Column("profile", 2),
    ]
    table: list[list[str]] = []
    styles: list[str | None] = []
    total_dph = total_spent = 0.0
    for v in views:
        if not all_ and v.get("destroyed_at"):
            continue
        table.append([
            v["name"],
            v["status"] + (f" ({v['instance_status']})" if v.get("instance_status") else "")
            + (f", unhealthy: {v['health_reason']}" if v.get("health") == "unhealthy" else "")
            + (f" ({v['replicas_healthy']}/{v['replicas_wanted']} healthy"
               + (f", {v['replicas_lost']} lost" if v.get("replicas_lost") else "") + ")"
               if v.get("replicas_wanted") is not None and v.get("replicas_healthy") is not None else ""),
            f"{v['dph_total']:.3f}" if v["dph_total"] is not None else "-",
            f"${v['cost_so_far']:.2f}",
            human_duration(v["uptime_s"]),
            v["expires"] or "-",
            v["endpoint"] or "-",
            str(v["instance_id"] or "-") if not v.get("replicas") else f"{len(v['replicas'])} replicas",
            v["profile"],
        ])
        styles.append(STATUS_STYLES.get(v["status"]))
        if v["dph_total"] is not None and v["status"] not in ("destroyed", "failed"):
            total_dph += v["dph_total"]
        total_spent += v["cost_so_far"] or 0.0
    for r, f in foreign:
        fv = _foreign_view(r, f)
        table.append([
            f"({fv['owner'] or 'unknown owner'})",
            f"foreign ({f.status or 'provisioning'})",
            f"{f.dph_total:.3f}" if f.dph_total is not None else "-",
            "-",
            human_duration(fv["age_s"]) if fv["age_s"] is not None else "-",
            "-",
            "-",
            str(f.instance_id),
            "-",
        ])
        styles.append("dim")
    footer = ["total", "", f"{total_dph:.3f}", f"${total_spent:.2f}", "", "", "", "", ""] if table else None
    print_table(columns, table, wide=output == "wide", styles=styles, footer=footer)
    if foreign:
        say(f"{len(foreign)} foreign instance(s): rented by other owners on this account; read-only here "
            "('destroy --include-foreign --instance ID' removes one on purpose)")
    for v in views:
        if v["ttl_overdue"]:
            say(f"warning: {v['name']}: its TTL expired at {v['expires_at']} but instance {v['instance_id']} still "
                f"runs (the watchdog did not destroy it): run 'glmdeploy destroy {v['name']}'")
    for o in orphans:
        say(
            f"{paint('orphan:', '1;31')} instance {o.instance_id} ({o.label}) bills ${o.dph_total or 0:.3f}/h: "
            f"{o.reason}; "
            "run 'glmdeploy destroy --orphans'"
        )


@handles_errors
def status(
    name: Name = None,
    json_output: JsonOutput = False,
    api_key: ApiKey = None,
    watch: Annotated[
        bool, typer.Option("--watch", "-w", help="Refresh health, cost and the engine's load until Ctrl-C.")
    ] = False,
    interval: Annotated[
        float | None, typer.Option(metavar="SECONDS", help="With --watch: seconds between refreshes (default 5).")
    ] = None,
    count: Annotated[int | None, typer.Option(metavar="N", help="With --watch: stop after N refreshes.")] = None,
) -> None:
    """Live status, endpoint health and cost of a deployment.

    A ready deployment whose engine died is reported ``unhealthy`` with the reason (and ``list``
    remembers it); the instance still bills until it is destroyed. With --watch it also shows the
    engine's requests running and waiting and its KV-cache usage; Ctrl-C ends the watch (exit 0) and
    leaves the deployment running.
    """
    from glmdeploy.errors import UsageError

    if not watch and (interval is not None or count is not None):
        raise UsageError("--interval and --count go with --watch")
    if interval is not None and not (interval > 0 and interval < float("inf")):
        raise UsageError(f"--interval must be a number of seconds above 0, not {interval:g}")
    if count is not None and count < 1:
        raise UsageError(f"--count must be at least 1, not {count}")
    if watch:
        from glmdeploy.commands.watch import watch as run_watch

        run_watch(name, interval=5.0 if interval is None else interval, count=count, json_output=json_output,
                  api_key=api_key)
        return

    from glmdeploy import deployment_health
    from glmdeploy.connect import connect_for
    from glmdeploy.lifecycle import reconcile
    from glmdeploy.state import StateStore

    with StateStore.open() as store:
        d = store.resolve(name)
        if d.is_group:
            _group_status(store, d, json_output, api_key)
            return
        live = None
        health = None
        reason = None
        if d.is_active:
            conn = connect_for(d, api_key)
            with conn.client:
                reconciled = reconcile(store, conn.client, conn.api_url)
                inst = reconciled.instances.get(d.label)
                live = (inst.actual_status or "provisioning") if inst else "gone"
            d = store.get(d.id)
            if d.endpoint and d.is_active:
                with deployment_health.endpoint_client(d) as http:
                    reading = deployment_health.probe_deployment(d, http)
                health, reason, d = deployment_health.judge(store, d, reading)
    from glmdeploy import calibration
    from glmdeploy.tls import colon_form

    view = _view(d, live=live)
    view["health"] = health
    view["health_reason"] = reason
    view["kv_capacity"] = calibration.kv_capacity(d)
    if json_output:
        emit_json(view)
        return
    import sys

    from glmdeploy.durations import human_duration

    style = {"failed": "31", "orphaned": "1;31"}.get(d.status)
    shown_status = paint(d.status, style, sys.stdout) if style else d.status
    lines = [
        f"{d.name}: {shown_status}" + (f" (instance {d.instance_id}: {live})" if live else ""),
        f"  profile:  {d.profile}",
        f"  endpoint: {d.endpoint or '-'}" + (f"  [{health}]" if health else ""),
        *([f"  health:   {health}: {reason}"] if health and reason else []),
        *([f"  tls:      pinned, sha256 {colon_form(d.tls_fingerprint)}"] if d.tls_fingerprint else []),
        f"  model:    {d.model or '-'}",
        f"  $/h:      {d.dph_total if d.dph_total is not None else '-'}; so far ${view['cost_so_far']:.2f}"
        f" over {human_duration(view['uptime_s'])}",
    ]
    if d.expires_at and view["ttl_overdue"]:
        lines.append(f"  expires:  OVERDUE: the TTL watchdog should have destroyed it at "
                     f"{d.expires_at.isoformat(timespec='seconds')}, and it still runs: "
                     f"run 'glmdeploy destroy {d.name}'")
    elif d.expires_at and d.is_active:
        lines.append(f"  expires:  {d.expires_at.isoformat(timespec='seconds')} ({view['expires']}; TTL watchdog)")
    elif d.expires_at and d.destroyed_at is not None and d.destroyed_at >= d.expires_at:
        lines.append(f"  expired:  {d.expires_at.isoformat(timespec='seconds')}: the TTL watchdog destroyed it")
    elif d.is_active:
        lines.append("  expires:  never (no TTL watchdog): destroy it yourself")
    if view["kv_capacity"] is not None:
        lines += calibration.render(view["kv_capacity"])
    if d.error and not reason:
        lines.append(f"  error:    {d.error}")
    print("\n".join(lines))


def redact(text: str, secrets: list[str]) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, "[redacted]")
    return text


@handles_errors
def logs(
    name: Name = None,
    tail: Annotated[int | None, typer.Option(min=1, help="Only the last N lines.")] = None,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing new lines.")] = False,
    api_key: ApiKey = None,
) -> None:
    """Engine logs of a deployment, with secrets redacted."""
    import sys
    import time

    from glmdeploy.connect import connect_for
    from glmdeploy.readiness import LogFollower
    from glmdeploy.state import StateStore
    from glmdeploy.vast.errors import NotFound

    with StateStore.open() as store:
        d = store.resolve(name)
    if d.instance_id is None or not d.is_active:
        raise _gone(d)
    conn = connect_for(d, api_key)
    secrets = [d.endpoint_key() or "", getattr(conn.client, "_api_key", None) or ""]
    follower = LogFollower()
    pause = 0.0
    with conn.client:
        while True:
            try:
                text = conn.client.request_logs(d.instance_id, tail=tail)
            except NotFound:
                if conn.client.show_instance(d.instance_id) is not None:
                    raise
                if not follow:
                    from glmdeploy.errors import UsageError

                    raise UsageError(
                        f"deployment {d.name!r}: instance {d.instance_id} no longer exists (destroyed), so it has"
                        " no logs", hint="'glmdeploy list' closes its record"
                    ) from None
                # Destroyed while we followed it (destroy in another terminal, the TTL watchdog):
                # the logs have simply ended.
                if follower.pending():
                    sys.stdout.write(redact(follower.pending(), secrets) + "\n")
                sys.stdout.flush()
                say(f"{d.name}: instance {d.instance_id} is gone (destroyed); no more logs")
                return
            # An unterminated last line may still grow: the follower holds it back until it is complete.
            lines = follower.feed(text)
            for line in lines:
                sys.stdout.write(redact(line, secrets) + "\n")
            if not follow:
                if follower.pending():
                    sys.stdout.write(redact(follower.pending(), secrets) + "\n")
                sys.stdout.flush()
                return
            sys.stdout.flush()
            pause = 2.0 if lines else min(30.0, max(2.0, pause * 1.5))
            time.sleep(pause * conn.pacing.scale)


def _age_s(started_at: float | None, scale: float) -> float | None:
    """Seconds since Vast's ``start_date``, on the provider's clock (the sandbox's runs 1/scale faster)."""
    import time

    if started_at is None:
        return None
    return max(0.0, (time.time() - started_at) / scale)


def _foreign_view(r: Reconciled, f: Foreign) -> dict[str, Any]:
    age = _age_s(f.started_at, r.time_scale)
    return {"instance_id": f.instance_id, "label": f.label, "owner": f.owner, "dph_total": f.dph_total,
            "instance_status": f.status, "age_s": round(age) if age is not None else None, "api_url": r.api_url}


def _gone(d: Deployment) -> Exception:
    from glmdeploy.errors import UsageError

    return UsageError(f"deployment {d.name!r} has no running instance (status {d.status})")


InsecureHttp = Annotated[
    bool,
    typer.Option(
        "--insecure-http",
        help="Export a plain http:// base URL and no CA bundle (the key then travels in clear: "
        "only for a transport you secure yourself, e.g. an SSH tunnel).",
    ),
]


@handles_errors
def env(name: Name = None, insecure_http: InsecureHttp = False) -> None:
    """Print export lines for OPENAI_BASE_URL, OPENAI_API_KEY, OPENAI_MODEL, MODEL and the CA bundle (for eval).

    The base URL is https://; SSL_CERT_FILE (httpx, openai), REQUESTS_CA_BUNDLE (requests) and
    CURL_CA_BUNDLE (curl) name a per-deployment bundle: the system CAs plus the endpoint's pinned
    certificate, so the OpenAI SDK and curl verify the endpoint with no flags.
    """
    import shlex

    from glmdeploy.ca_bundle import write_bundle
    from glmdeploy.state import StateStore

    with StateStore.open() as store:
        d = store.resolve(name)
    if not d.endpoint or not d.is_active:
        from glmdeploy.errors import UsageError

        raise UsageError(f"deployment {d.name!r} has no endpoint (status {d.status})")
    # A replica group's endpoint is the gateway's, with the gateway's own key (never a replica's).
    endpoint = d.endpoint
    lines = []
    if insecure_http:
        endpoint = "http://" + endpoint.removeprefix("https://").removeprefix("http://")
        print("warning: --insecure-http: the key and every prompt travel in clear text"
              + ("; this deployment's proxy speaks TLS only, so the http:// URL works only through a tunnel "
                 "of yours that terminates it" if d.tls_fingerprint else ""), file=sys.stderr)
    elif endpoint.startswith("https://") and d.tls_certificate:
        bundle = shlex.quote(str(write_bundle(d)))
        lines = [f"export SSL_CERT_FILE={bundle}", f"export REQUESTS_CA_BUNDLE={bundle}",
                 f"export CURL_CA_BUNDLE={bundle}"]
    print(f"export OPENAI_BASE_URL={shlex.quote(endpoint)}")
    print(f"export OPENAI_API_KEY={shlex.quote(d.endpoint_key() or '')}")
    # The served name differs across profiles (and engines): clients need it in every request.
    print(f"export OPENAI_MODEL={shlex.quote(d.model or '')}")
    print(f"export MODEL={shlex.quote(d.model or '')}")
    for line in lines:
        print(line)


@handles_errors
def destroy(
    name: Name = None,
    all_: Annotated[bool, typer.Option("--all", help="Destroy every active deployment.")] = False,
    orphans: Annotated[
        bool, typer.Option("--orphans", help="Destroy this owner's labelled instances that no record tracks.")
    ] = False,
    include_foreign: Annotated[
        bool,
        typer.Option(
            "--include-foreign",
            help="Also destroy other owners' glmdeploy instances picked by --instance or --older-than (implies"
            " --orphans).",
        ),
    ] = False,
    instance: Annotated[
        list[int] | None,
        typer.Option("--instance", min=1, help="With --orphans: only this instance id (repeatable)."),
    ] = None,
    older_than: Annotated[
        str | None,
        typer.Option(
            help="With --orphans: only untracked instances running longer than this, e.g. 2h (this state dir's"
            " own orphaned records are always included)."
        ),
    ] = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    json_output: JsonOutput = False,
    api_key: ApiKey = None,
    api_url: ApiUrl = None,
    sandbox: SandboxAccount = False,
) -> None:
    """Destroy a deployment (idempotent: something already gone is success).

    --orphans only ever touches this owner's instances (this state dir's scope and its CI scope, or
    $GLMDEPLOY_OWNER): other owners' are foreign and need --include-foreign with --instance ID or
    --older-than DURATION.
    """
    import sys

    from glmdeploy.durations import parse_duration
    from glmdeploy.errors import UsageError
    from glmdeploy.ownership import explicit_owner
    from glmdeploy.state import StateStore

    orphans = orphans or include_foreign
    if sum(bool(x) for x in (name, all_, orphans)) > 1:
        raise UsageError("give a NAME, --all or --orphans, not several")
    if (instance or older_than) and not orphans:
        raise UsageError("--instance and --older-than select orphans: add --orphans (or --include-foreign)")
    if include_foreign and not (instance or older_than):
        raise UsageError(
            "--include-foreign needs --instance ID or --older-than DURATION: other owners' instances are never"
            " swept wholesale",
            hint="'glmdeploy list' shows them with their ids and $/h",
        )
    min_age_s = parse_duration(older_than, option="--older-than") if older_than else None
    explicit_owner()  # a bad GLMDEPLOY_OWNER is bad input: say so before anything is looked at
    if not yes and not sys.stdin.isatty():
        raise UsageError("refusing to destroy without confirmation: no terminal to ask on", hint="pass --yes")
    from glmdeploy.teardown import InterruptGuard

    results: list[dict[str, Any]] = []
    unchecked: list[GlmdeployError] = []
    # A signal waits until the teardown under way is over (verified or recorded), then stops the rest.
    guard = InterruptGuard()
    with StateStore.open() as store, guard:
        if orphans:
            selection = OrphanSelection(set(instance or ()), min_age_s, include_foreign)
            with guard.shielded():
                results, unchecked = _destroy_orphans(store, api_key, yes, selection, api_url=api_url,
                                                      sandbox=sandbox)
        else:
            if all_:
                targets = store.active()
            elif name is None and not store.active():
                # Safe to repeat: a second `destroy --yes` finds nothing and that is success.
                targets = []
            else:
                target = store.resolve(name)
                if not target.is_active:
                    say(f"{target.name} is already {target.status}")
                    results.append({"name": target.name, "instance_id": target.instance_id, "result": "already gone"})
                    targets = []
                else:
                    targets = [target]
            if targets and not yes and not typer.confirm(
                f"Destroy {', '.join(t.name for t in targets)}? This stops billing and deletes their data."
            ):
                raise typer.Exit(1)
            for d in targets:
                with guard.shielded():
                    results.append(_destroy_one(store, d, api_key))
    if not results and not orphans:
        say("nothing to destroy")
    if json_output:
        emit_json({"destroyed": results})
    failures = [r for r in results if r["result"] == "failed"]
    if unchecked and not failures:
        # Not checked is not "nothing there": a sweep with a missing key or an unreachable API fails.
        first = unchecked[0]
        first.message = f"could not look for orphans: {first.message}"
        raise first
    if failures:
        from glmdeploy.vast.errors import VastError

        # One summary line (the per-instance reasons were said above), exit 7 as for any API failure.
        ids = ", ".join(str(r["instance_id"]) for r in failures)
        raise VastError(
            f"{len(failures)} of {len(results)} destroy(s) failed (instance {ids}); it may still be billing",
            hint="run 'glmdeploy destroy --orphans' once Vast.ai answers",
        )


def _destroy_one(store: StateStore, d: Deployment, api_key: str | None) -> dict[str, Any]:
    import contextlib
    import os

    if d.is_group:
        return _destroy_group(store, d, api_key)

    from glmdeploy.connect import connect_for
    from glmdeploy.errors import GlmdeployError
    from glmdeploy.state import DeploymentReleased
    from glmdeploy.teardown import orphan_hint, tear_down

    if d.instance_id is None:
        store.mark_destroyed(d.id, status="destroyed", error=d.error)
        say(f"{d.name}: nothing was rented; record closed")
        return {"name": d.name, "instance_id": None, "result": "no instance"}
    if _close_sandbox_records(store, d.api_url):
        return {"name": d.name, "instance_id": d.instance_id, "result": "already gone"}
    # This process owns the row now: if it dies mid-destroy, reconcile must see a dead owner and call
    # the instance an orphan (the pid of the `up` that created it may be alive, or reused).
    try:
        store.update(d.id, status="destroying", owner_pid=os.getpid())
    except DeploymentReleased:
        # Another process (a second `destroy`, or `up` cleaning up) closed it after verifying the
        # instance gone. Destroy is idempotent: check once more below, but leave its record alone.
        pass
    try:
        conn = connect_for(d, api_key)
    except GlmdeployError as exc:
        with contextlib.suppress(DeploymentReleased):
            store.update(d.id, status="orphaned", error=f"destroy failed: {exc}")
        say(f"{d.name}: could not destroy instance {d.instance_id} ({exc}); it is recorded as orphaned: "
            f"{orphan_hint(exc)}")
        return {"name": d.name, "instance_id": d.instance_id, "result": "failed", "error": str(exc)}
    with conn.client:
        result = tear_down(conn.client, d.instance_id, pacing=conn.pacing, store=store, deployment=d)
    say(f"{d.name}: {result.message()}")
    if result.outcome == "orphaned":
        return {"name": d.name, "instance_id": d.instance_id, "result": "failed", "error": str(result.error)}
    return {"name": d.name, "instance_id": d.instance_id,
            "result": "destroyed" if result.outcome == "destroyed" else "already gone"}


@dataclass(frozen=True)
class OrphanSelection:
    """Which untracked instances ``destroy --orphans`` may destroy."""

    instance_ids: set[int]
    min_age_s: float | None
    include_foreign: bool

    def picks(self, instance_id: int, age_s: float | None, *, tracked: bool = False) -> bool:
        """``tracked``: this state dir's own record says it is an orphan, so no other machine can be
        using it: the age guard (meant for instances other machines may run) does not apply."""
        if self.instance_ids and instance_id not in self.instance_ids:
            return False
        if tracked or self.min_age_s is None:
            return True
        return age_s is not None and age_s >= self.min_age_s


def _describe_foreign(f: Foreign, age_s: float | None) -> str:
    owner = f"owner {f.owner}" if f.owner else "unknown owner (old label)"
    age = f", up {age_s / 3600:.2f}h" if age_s is not None else ""
    return f"instance {f.instance_id} ({f.label}, {owner}, ${f.dph_total or 0:.3f}/h{age})"


def _destroy_orphans(
    store: StateStore,
    api_key: str | None,
    yes: bool,
    selection: OrphanSelection,
    *,
    api_url: str | None = None,
    sandbox: bool = False,
) -> tuple[list[dict[str, Any]], list[GlmdeployError]]:
    """Destroy the selected orphans on every server; also returns the servers that could not be checked.

    The servers are the ones this state dir's records name (a sandbox that has stopped counts as
    checked: its instances ended with it) plus the account's default one. Without a Vast.ai key the
    default is skipped only when every record names a sandbox: a state dir with no record at all (a
    fresh CI runner) or with one on Vast.ai has an account to check, and not checking it fails.
    """
    from glmdeploy.connect import connect_default, connect_for, is_local
    from glmdeploy.errors import GlmdeployError, MissingApiKey
    from glmdeploy.lifecycle import reconcile
    from glmdeploy.teardown import tear_down

    results: list[dict[str, Any]] = []
    unchecked: list[GlmdeployError] = []
    servers: dict[str | None, Connection] = {}
    unreachable: set[str | None] = set()
    records = store.list(include_destroyed=True)
    for d in records:
        if d.api_url not in servers and d.api_url not in unreachable:
            try:
                servers[d.api_url] = connect_for(d, api_key)
            except GlmdeployError as exc:
                unreachable.add(d.api_url)
                if not _close_sandbox_records(store, d.api_url) and d.is_active:
                    say(f"warning: skipping {d.api_url}: {exc}")
                    unchecked.append(exc)
    # The account's default server too: an orphan of this owner may have no record here at all.
    vast_skipped = False
    try:
        default = connect_default(api_key, api_url, sandbox)
    except MissingApiKey as exc:
        default = None
        if records and all(is_local(d.api_url) for d in records):
            vast_skipped = True  # a sandbox-only state dir: its servers were checked above
        else:
            unchecked.append(exc)
    if default is not None and default.api_url not in servers:
        servers[default.api_url] = default
    elif default is not None:
        default.client.close()
    for conn in servers.values():
        with conn.client:
            try:
                found = reconcile(store, conn.client, conn.api_url, time_scale=conn.pacing.scale)
            except GlmdeployError as exc:
                say(f"warning: could not list the instances on {conn.api_url}: {exc}")
                unchecked.append(exc)
                continue
            picked = [o for o in found.orphans
                      if selection.picks(o.instance_id, _age_s(o.started_at, conn.pacing.scale),
                                         tracked=o.deployment is not None)]
            if len(picked) < len(found.orphans):
                say(f"{len(found.orphans) - len(picked)} orphan(s) on {conn.api_url} left alone: not selected by "
                    "--instance/--older-than (an unknown start time counts as too young)")
            foreign = [
                (f, _age_s(f.started_at, conn.pacing.scale))
                for f in found.foreign
                if selection.include_foreign and selection.picks(f.instance_id, _age_s(f.started_at,
                                                                                         conn.pacing.scale))
            ]
            for f in found.foreign:
                if not selection.include_foreign and f.instance_id in selection.instance_ids:
                    say(f"instance {f.instance_id} belongs to another owner ({f.owner or 'unknown'}): left alone;"
                        " add --include-foreign to destroy it")
            if foreign:
                names = "; ".join(_describe_foreign(f, age) for f, age in foreign)
                say(f"other owners' instances selected on {conn.api_url}: {names}")
            if (picked or foreign) and not yes:
                what = [f"instance {o.instance_id} ({o.label})" for o in picked]
                what += [_describe_foreign(f, age) for f, age in foreign]
                # On stderr: with --json, stdout holds only the JSON.
                question = f"Destroy {len(what)} instance(s) on {conn.api_url}: {'; '.join(what)}?"
                if not typer.confirm(question, err=True):
                    say("left alone: nothing destroyed")
                    raise typer.Exit(1)
            for o in picked:
                result = tear_down(conn.client, o.instance_id, pacing=conn.pacing, store=store,
                                   deployment=o.deployment, reason=f"orphan destroyed: {o.reason}")
                if result.outcome == "orphaned":
                    say(f"orphan {o.instance_id}: {result.message()}")
                    results.append({"instance_id": o.instance_id, "label": o.label, "result": "failed"})
                    continue
                say(f"orphan {o.instance_id} ({o.label}) destroyed: {o.reason}")
                results.append({"instance_id": o.instance_id, "label": o.label, "result": "destroyed"})
            for f, _age in foreign:
                view = {"instance_id": f.instance_id, "label": f.label, "owner": f.owner, "foreign": True}
                result = tear_down(conn.client, f.instance_id, pacing=conn.pacing)
                if result.outcome == "orphaned":
                    say(f"foreign instance {f.instance_id}: {result.message()}")
                    results.append({**view, "result": "failed"})
                    continue
                say(f"foreign instance {f.instance_id} ({f.label}) destroyed on request")
                results.append({**view, "result": "destroyed"})
    if vast_skipped:
        # Said, not warned: a sandbox-only user has no Vast.ai account to check, but should know.
        say("Vast.ai itself not checked: no API key, and every deployment recorded here used a sandbox")
    if not results and not unchecked:
        say("nothing to destroy: no orphaned instances")
    return results, unchecked


# ----------------------------------------------------------------------------- replica groups (issue 12)


def _group_summary(store: StateStore, group: Deployment) -> dict[str, Any]:
    """What ``list`` shows of a replica group: N/M healthy and the total $/h of the live replicas."""
    from glmdeploy.replicas import replica_views

    views = replica_views(store, group) if group.is_active else []
    live = [v for v in views if v["status"] != "lost"]
    return {
        "replicas": views,
        "replicas_healthy": sum(1 for v in views if v["healthy"]) if group.is_active else None,
        "replicas_lost": sum(1 for v in views if v["status"] == "lost"),
        "dph_total": round(sum(v["dph_total"] or 0.0 for v in live), 4) if group.is_active else group.dph_total,
    }


def _group_status(store: StateStore, group: Deployment, json_output: bool, api_key: str | None) -> None:
    from glmdeploy.connect import connect_for
    from glmdeploy.lifecycle import reconcile
    from glmdeploy.replicas import attach, gateway_view, replica_views

    if group.is_active:
        conn = connect_for(group, api_key)
        with conn.client:
            reconcile(store, conn.client, conn.api_url)  # a replica whose instance vanished becomes lost
        from glmdeploy.replicas import end_if_expired

        group = end_if_expired(store, store.get(group.id), note=say)
    gateway = attach(group) if group.is_active and group.gateway_url else None
    replicas = replica_views(store, group, gateway)
    view = _view(group)
    view.update({"replicas": replicas, "gateway": gateway_view(group, gateway),
                 "replicas_healthy": sum(1 for r in replicas if r["healthy"])})
    view["dph_total"] = round(sum(r["dph_total"] or 0.0 for r in replicas if r["status"] != "lost"), 4)
    if json_output:
        emit_json(view)
        return
    gw = view["gateway"]
    lines = [
        f"{group.name}: {group.status} ({view['replicas_healthy']}/{group.replicas_wanted} replicas healthy)",
        f"  profile:  {group.profile}",
        f"  endpoint: {group.endpoint or '-'}  [gateway pid {gw['pid']}, {gw['policy']}, "
        f"{'up' if gw['alive'] else 'DOWN'}]",
        f"  model:    {group.model or '-'}",
        f"  $/h:      {view['dph_total']:.3f} in all",
    ]
    for r in replicas:
        lines.append(f"  replica {r['index']}: {r['status']}{' (healthy)' if r['healthy'] else ''}, instance "
                     f"{r['instance_id']}, {r['endpoint'] or '-'}")
    if any(r["status"] == "lost" for r in replicas):
        lines.append(f"  a replica is lost: 'glmdeploy scale {group.name} --replicas {group.replicas_wanted}' "
                     "rents a replacement")
    print("\n".join(lines))


def _destroy_group(store: StateStore, group: Deployment, api_key: str | None) -> dict[str, Any]:
    from glmdeploy.connect import connect_for
    from glmdeploy.replicas import destroy_group

    conn = connect_for(group, api_key)
    with conn.client:
        results = destroy_group(store, conn.client, conn.pacing, group, note=say)
    failed = [r for r in results if r["result"] == "failed"]
    return {"name": group.name, "instance_id": None, "replicas": results,
            "result": "failed" if failed else "destroyed"}
