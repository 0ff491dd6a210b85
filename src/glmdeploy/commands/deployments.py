"""``glmdeploy list|status|logs|env|destroy``: managing deployments after ``up`` (issue 4)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import typer

from glmdeploy.commands._common import ApiKey, JsonOutput, emit_json, handles_errors, say

if TYPE_CHECKING:
    from glmdeploy.connect import Connection
    from glmdeploy.lifecycle import Reconciled
    from glmdeploy.state import Deployment, StateStore

Name = Annotated[str | None, typer.Argument(help="Deployment name (default: the only active one).")]


def _uptime_hours(d: Deployment) -> float:
    from glmdeploy.state import utcnow

    end = d.destroyed_at or utcnow()
    return max(0.0, (end - d.created_at).total_seconds() / 3600)


def _view(d: Deployment, *, live: str | None = None) -> dict[str, Any]:
    hours = _uptime_hours(d)
    view = d.public()
    view["uptime_s"] = round(hours * 3600)
    # Vast bills storage from creation and the GPU from running: price x lifetime is the upper bound.
    view["cost_so_far"] = round((d.dph_total or 0.0) * hours, 4)
    if live is not None:
        view["instance_status"] = live
    return view


def _reconcile_all(store: StateStore, api_key: str | None) -> tuple[list[Reconciled], list[str]]:
    """Reconcile every API server that holds an active deployment; servers out of reach are reported."""
    from glmdeploy.connect import connect_for
    from glmdeploy.lifecycle import reconcile

    done: list[Reconciled] = []
    problems: list[str] = []
    seen: set[str | None] = set()
    for d in store.active():
        if d.api_url in seen:
            continue
        seen.add(d.api_url)
        try:
            conn = connect_for(d, api_key)
            with conn.client:
                done.append(reconcile(store, conn.client, conn.api_url))
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
    closed = [d.name for d in store.active() if d.api_url == api_url and close_if_sandbox_gone(store, d)]
    for name in closed:
        say(f"{name}: its sandbox at {api_url} has stopped, and its instance with it; record closed")
    return closed


@handles_errors
def list_deployments(
    all_: Annotated[bool, typer.Option("--all", help="Include destroyed deployments.")] = False,
    json_output: JsonOutput = False,
    api_key: ApiKey = None,
) -> None:
    """List deployments with status, $/h, uptime and cost so far (checked against Vast.ai)."""
    from glmdeploy.state import StateStore

    with StateStore.open() as store:
        reconciled, problems = _reconcile_all(store, api_key)
        live: dict[str, str] = {}
        orphans = [o for r in reconciled for o in r.orphans]
        for r in reconciled:
            for label, inst in r.instances.items():
                live[label] = inst.actual_status or "provisioning"
        rows = store.list(include_destroyed=True)
    for p in problems:
        say(f"warning: {p}")
    views = [_view(d, live=live.get(d.label)) for d in rows]
    if json_output:
        emit_json(
            {
                "deployments": views,
                "orphans": [
                    {"instance_id": o.instance_id, "label": o.label, "reason": o.reason, "dph_total": o.dph_total,
                     "deployment": o.deployment.name if o.deployment else None}
                    for o in orphans
                ],
            }
        )
        return
    from rich.table import Table

    from glmdeploy.commands._common import console

    table = Table("name", "profile", "status", "instance", "$/h", "uptime", "cost", "endpoint")
    for v in views:
        if not all_ and v["status"] in ("destroyed",) and v.get("destroyed_at"):
            continue
        if not all_ and v.get("destroyed_at"):
            continue
        table.add_row(
            v["name"],
            v["profile"],
            v["status"] + (f" ({v['instance_status']})" if v.get("instance_status") else ""),
            str(v["instance_id"] or "-"),
            f"{v['dph_total']:.3f}" if v["dph_total"] is not None else "-",
            f"{v['uptime_s'] / 3600:.2f}h",
            f"${v['cost_so_far']:.2f}",
            v["endpoint"] or "-",
        )
    console().print(table)
    for o in orphans:
        say(
            f"orphan: instance {o.instance_id} ({o.label}) bills ${o.dph_total or 0:.3f}/h: {o.reason}; "
            "run 'glmdeploy destroy --orphans'"
        )


@handles_errors
def status(name: Name = None, json_output: JsonOutput = False, api_key: ApiKey = None) -> None:
    """Live status, endpoint health and cost of a deployment."""
    import httpx

    from glmdeploy.connect import connect_for
    from glmdeploy.engines import get_engine
    from glmdeploy.lifecycle import reconcile
    from glmdeploy.state import StateStore

    with StateStore.open() as store:
        d = store.resolve(name)
        live = None
        health = None
        if d.is_active:
            conn = connect_for(d, api_key)
            with conn.client:
                reconciled = reconcile(store, conn.client, conn.api_url)
                inst = reconciled.instances.get(d.label)
                live = (inst.actual_status or "provisioning") if inst else "gone"
            d = store.get(d.id)
            if d.endpoint and d.is_active:
                engine = get_engine(str(d.profile_snapshot["engine"]["kind"]))
                base = d.endpoint.removesuffix("/v1")
                try:
                    r = httpx.get(base + engine.health_path, headers={"Authorization": f"Bearer {d.endpoint_key()}"},
                                  timeout=30)
                    health = "healthy" if r.status_code == 200 else f"unhealthy (HTTP {r.status_code})"
                except httpx.HTTPError as exc:
                    health = f"unreachable ({type(exc).__name__})"
    view = _view(d, live=live)
    view["health"] = health
    if json_output:
        emit_json(view)
        return
    lines = [
        f"{d.name}: {d.status}" + (f" (instance {d.instance_id}: {live})" if live else ""),
        f"  profile:  {d.profile}",
        f"  endpoint: {d.endpoint or '-'}" + (f"  [{health}]" if health else ""),
        f"  model:    {d.model or '-'}",
        f"  $/h:      {d.dph_total if d.dph_total is not None else '-'}; so far ${view['cost_so_far']:.2f}"
        f" over {view['uptime_s'] / 3600:.2f}h",
    ]
    if d.expires_at:
        lines.append(f"  expires:  {d.expires_at.isoformat(timespec='seconds')} (TTL watchdog)")
    if d.error:
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
            text = conn.client.request_logs(d.instance_id, tail=tail)
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


def _gone(d: Deployment) -> Exception:
    from glmdeploy.errors import UsageError

    return UsageError(f"deployment {d.name!r} has no running instance (status {d.status})")


@handles_errors
def env(name: Name = None) -> None:
    """Print export lines for OPENAI_BASE_URL, OPENAI_API_KEY and MODEL (for eval)."""
    import shlex

    from glmdeploy.state import StateStore

    with StateStore.open() as store:
        d = store.resolve(name)
    if not d.endpoint or not d.is_active:
        from glmdeploy.errors import UsageError

        raise UsageError(f"deployment {d.name!r} has no endpoint (status {d.status})")
    print(f"export OPENAI_BASE_URL={shlex.quote(d.endpoint)}")
    print(f"export OPENAI_API_KEY={shlex.quote(d.endpoint_key() or '')}")
    print(f"export MODEL={shlex.quote(d.model or '')}")


@handles_errors
def destroy(
    name: Name = None,
    all_: Annotated[bool, typer.Option("--all", help="Destroy every active deployment.")] = False,
    orphans: Annotated[bool, typer.Option("--orphans", help="Destroy labelled instances nobody tracks.")] = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    json_output: JsonOutput = False,
    api_key: ApiKey = None,
) -> None:
    """Destroy a deployment (idempotent: something already gone is success)."""
    import sys

    from glmdeploy.errors import UsageError
    from glmdeploy.state import StateStore

    if sum(bool(x) for x in (name, all_, orphans)) > 1:
        raise UsageError("give a NAME, --all or --orphans, not several")
    if not yes and not sys.stdin.isatty():
        raise UsageError("refusing to destroy without confirmation: no terminal to ask on", hint="pass --yes")
    results: list[dict[str, Any]] = []
    with StateStore.open() as store:
        if orphans:
            results = _destroy_orphans(store, api_key, yes)
        else:
            if all_:
                targets = store.active()
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
                results.append(_destroy_one(store, d, api_key))
    if json_output:
        emit_json({"destroyed": results})
    failures = [r for r in results if r["result"] == "failed"]
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

    from glmdeploy.connect import connect_for
    from glmdeploy.errors import GlmdeployError
    from glmdeploy.lifecycle import destroy_and_verify
    from glmdeploy.state import DeploymentReleased

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
        with conn.client:
            now = destroy_and_verify(conn.client, d.instance_id, sleep=_scaled_sleep(conn))
    except GlmdeployError as exc:
        with contextlib.suppress(DeploymentReleased):
            store.update(d.id, status="orphaned", error=f"destroy failed: {exc}")
        say(f"{d.name}: destroy of instance {d.instance_id} failed: {exc}; retry with 'glmdeploy destroy --orphans'")
        return {"name": d.name, "instance_id": d.instance_id, "result": "failed", "error": str(exc)}
    if store.get(d.id).is_active:
        store.mark_destroyed(d.id, status="destroyed")
    say(f"{d.name}: instance {d.instance_id} " + ("destroyed" if now else "was already gone"))
    return {"name": d.name, "instance_id": d.instance_id, "result": "destroyed" if now else "already gone"}


def _scaled_sleep(conn: Connection) -> Any:
    import time

    return lambda seconds: time.sleep(seconds * conn.pacing.scale)


def _destroy_orphans(store: StateStore, api_key: str | None, yes: bool) -> list[dict[str, Any]]:
    from glmdeploy.connect import connect, connect_for
    from glmdeploy.errors import GlmdeployError
    from glmdeploy.lifecycle import destroy_and_verify, reconcile

    results: list[dict[str, Any]] = []
    servers: dict[str | None, Connection] = {}
    unreachable: set[str | None] = set()
    for d in store.list(include_destroyed=True):
        if d.api_url not in servers and d.api_url not in unreachable:
            try:
                servers[d.api_url] = connect_for(d, api_key)
            except GlmdeployError as exc:
                unreachable.add(d.api_url)
                if not _close_sandbox_records(store, d.api_url):
                    say(f"warning: skipping {d.api_url}: {exc}")
    if not servers:
        try:
            c = connect(api_key, None, False)
            servers[c.api_url] = c
        except GlmdeployError as exc:
            say(f"warning: {exc}")
    for conn in servers.values():
        with conn.client:
            found = reconcile(store, conn.client, conn.api_url)
            if found.orphans and not yes and not typer.confirm(
                f"Destroy {len(found.orphans)} orphaned instance(s) on {conn.api_url}?"
            ):
                continue
            for o in found.orphans:
                try:
                    destroy_and_verify(conn.client, o.instance_id, sleep=_scaled_sleep(conn))
                except GlmdeployError as exc:
                    say(f"orphan {o.instance_id}: destroy failed: {exc}")
                    results.append({"instance_id": o.instance_id, "label": o.label, "result": "failed"})
                    continue
                if o.deployment is not None:
                    store.mark_destroyed(o.deployment.id, status="destroyed", error=f"orphan destroyed: {o.reason}")
                say(f"orphan {o.instance_id} ({o.label}) destroyed: {o.reason}")
                results.append({"instance_id": o.instance_id, "label": o.label, "result": "destroyed"})
    if not results:
        say("no orphaned instances")
    return results
