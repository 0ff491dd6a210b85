"""``glmdeploy scale NAME --replicas N``: replace lost replicas, grow or shrink a group (issue 12)."""

from __future__ import annotations

from typing import Annotated

import typer

from glmdeploy.commands._common import ApiKey, JsonOutput, emit_json, handles_errors, say
from glmdeploy.completion import deployment_names


@handles_errors
def scale(
    name: Annotated[
        str, typer.Argument(help="The replica group (from 'up --replicas N').", autocompletion=deployment_names)
    ],
    replicas: Annotated[int, typer.Option(min=1, help="Healthy replicas the group should have.")],
    ttl: Annotated[
        str | None, typer.Option(help="Host watchdog for the new replicas (default as for 'up').")
    ] = None,
    json_output: JsonOutput = False,
    api_key: ApiKey = None,
) -> None:
    """Rent replacements through the same verified path, register them; deregister, then destroy extras."""
    from glmdeploy.connect import connect_for
    from glmdeploy.deploy import Deployer, UpRequest
    from glmdeploy.errors import UsageError
    from glmdeploy.gateway import smg_binary
    from glmdeploy.lifecycle import reconcile
    from glmdeploy.ownership import parse_label
    from glmdeploy.profiles.model import Profile
    from glmdeploy.progress import JsonEvents, TerminalEvents
    from glmdeploy.replicas import replica_views, scale_group
    from glmdeploy.state import StateStore
    from glmdeploy.teardown import InterruptGuard
    from glmdeploy.ttl import resolve_ttl

    smg_binary()
    store = StateStore.open()
    try:
        group = store.get(name)
        if not group.is_group or not group.is_active:
            raise UsageError(f"{group.name!r} is not an active replica group (start one with 'up --replicas N')")
        profile = Profile.model_validate(group.profile_snapshot)
        ttl_s = resolve_ttl(ttl, timeout_s=profile.readiness.timeout_s, force=False)
        conn = connect_for(group, api_key)
        events: JsonEvents | TerminalEvents = JsonEvents() if json_output else TerminalEvents()
        parts = parse_label(group.label)
        guard = InterruptGuard()
        try:
            with conn.client, guard:
                reconcile(store, conn.client, conn.api_url)  # a vanished replica's row is closed: it is lost
                deployer = Deployer(client=conn.client, store=store, events=events, confirm=lambda _c: True,
                                    pacing=conn.pacing)
                deployer.shield = guard.shielded
                request = UpRequest(profile=profile, api_url=conn.api_url, ttl_s=ttl_s,
                                    owner=parts.owner if parts is not None else None)
                try:
                    group = scale_group(deployer, request, store.get(group.id), replicas)
                except KeyboardInterrupt:
                    guard.closing()
                    raise guard.error(deployer.abort("interrupted")) from None
        finally:
            if isinstance(events, TerminalEvents):
                events.close()
        views = [v for v in replica_views(store, group) if v["status"] != "lost"]
    finally:
        store.close()
    if json_output:
        emit_json({"event": "scaled", "deployment": {**group.public(), "replicas": views}})
        return
    say(f"{group.name}: {len(views)} replica(s) behind {group.endpoint}, ${group.dph_total or 0:.3f}/h in all")
