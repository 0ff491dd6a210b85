"""N replicas on separate rentals behind one gateway (issue 12).

A *group* is a deployment row that rents nothing itself (``replicas_wanted`` set): it owns the
gateway (URL, pid, policy, key) and is what the user names. Each replica is an ordinary deployment
row (``parent_id`` = the group) rented through the very same ``Deployer.up`` as a single
deployment: ready marker, health, full smoke. Only after its own checks pass is it registered with
the gateway. Its label is the group's plus ``-r<index>``, so ``destroy --orphans`` finds a replica
a crash left behind, owner-scoped, and ``reconcile`` marks a replica whose instance vanished as
destroyed; one that was not retired on purpose is shown ``lost``.

Every instance goes down through ``glmdeploy.teardown.tear_down``; a shrink or a destroy
deregisters a replica from the gateway before destroying it, so no request is sent to a dying one.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from glmdeploy.errors import GlmdeployError, NoOfferError
from glmdeploy.gateway import DEFAULT_POLICY, GatewayError, SmgGateway

if TYPE_CHECKING:
    from glmdeploy.deploy import Deployer, Pacing, UpRequest
    from glmdeploy.state import Deployment, StateStore
    from glmdeploy.vast.client import VastClient

LOST = "lost"


@dataclass
class GroupSpec:
    replicas: int
    allow_fewer: bool = False
    gateway_host: str = "127.0.0.1"
    gateway_port: int | None = None
    policy: str = DEFAULT_POLICY


def worker_url(endpoint: str) -> str:
    """A replica's OpenAI base URL (``.../v1``) as the gateway wants it: the server root."""
    return endpoint.removesuffix("/").removesuffix("/v1")


def attach(group: Deployment) -> SmgGateway:
    assert group.gateway_url is not None
    return SmgGateway(group.gateway_url, group.gateway_key() or "", pid=group.gateway_pid,
                      policy=group.gateway_policy or DEFAULT_POLICY)


def count_machines(client: VastClient, request: UpRequest) -> int:
    """How many distinct machines have a matching offer under the cap (one replica per machine)."""
    from glmdeploy.market import search_ranked

    profile = request.profile
    cap = profile.hardware.max_price if request.max_price is None else request.max_price
    ranked = search_ranked(client, profile, max_price=cap, limit=50)
    machines = {getattr(r.offer, "machine_id", None) or getattr(r.offer, "id", None) for r in ranked}
    return len(machines)


def check_offers(client: VastClient, request: UpRequest, spec: GroupSpec) -> int:
    """The number of replicas to rent; no offers enough is bad input unless ``--allow-fewer``."""
    found = count_machines(client, request)
    if found >= spec.replicas:
        return spec.replicas
    if spec.allow_fewer and found > 0:
        return found
    raise NoOfferError(
        f"{found} matching offer(s) on separate machines for {spec.replicas} replicas of profile "
        f"{request.profile.name!r}; nothing was rented",
        hint="pass --allow-fewer to start with fewer, raise --max-price, or ask for fewer --replicas",
    )


def up_group(
    deployer: Deployer,
    request: UpRequest,
    spec: GroupSpec,
    *,
    log_dir: Any = None,
) -> Deployment:
    """Rent ``spec.replicas`` replicas, each verified, behind a started gateway; the group's row.

    On any failure or interrupt everything this call rented is torn down and the gateway stopped
    before the error goes on.
    """
    from glmdeploy.engines import get_engine
    from glmdeploy.gateway import check_port_free, pick_port, smg_binary

    smg_binary()
    host = spec.gateway_host
    if spec.gateway_port is not None:
        check_port_free(host, spec.gateway_port)
    count = check_offers(deployer.client, request, spec)
    if count < spec.replicas:
        deployer.events.note(f"only {count} machine(s) match: starting {count} of {spec.replicas} replicas "
                             "(--allow-fewer)")
    store = deployer.store
    profile = request.profile
    group = store.create(
        profile=profile.name,
        profile_snapshot=profile.model_dump(mode="json"),
        name=request.name,
        api_url=request.api_url,
        model=get_engine(profile.engine.kind).reported_model_name(profile),
        phase="gateway",
        owner=request.owner,
        replicas_wanted=count,
    )
    gateway: SmgGateway | None = None
    try:
        port = spec.gateway_port if spec.gateway_port is not None else pick_port(host)
        log_path = (log_dir / f"gateway-{group.id}.log") if log_dir is not None else None
        gateway = SmgGateway.start(host=host, port=port, policy=spec.policy, log_path=log_path)
        group = store.update(group.id, gateway_url=gateway.url, gateway_pid=gateway.pid, gateway_policy=spec.policy,
                             gateway_api_key=gateway._key, endpoint=gateway.url + "/v1", status="starting")
        deployer.events.note(f"gateway (SMG) listening on {gateway.url}, pid {gateway.pid}")
        for index in range(count):
            add_replica(deployer, request, group, gateway, index)
        return finish(store, group.id)
    except BaseException as exc:
        reason = "interrupted" if isinstance(exc, KeyboardInterrupt) else f"replica group failed: {exc}"
        with deployer.shield():
            with contextlib.suppress(GlmdeployError):
                deployer.abort(reason)
            destroy_group(store, deployer.client, deployer.pacing, store.get(group.id), reason=reason,
                          status="failed", note=deployer.events.note, gateway=gateway)
        raise


def add_replica(deployer: Deployer, request: UpRequest, group: Deployment, gateway: SmgGateway,
                index: int) -> Deployment:
    """Rent replica ``index`` on a machine no live replica uses, verify it, then register it."""
    from glmdeploy.teardown import tear_down

    store = deployer.store
    live = [r for r in store.replicas_of(group.id) if r.is_active]
    used = tuple(r.machine_id for r in live if r.machine_id is not None)
    hosts = tuple(dict.fromkeys(h for r in live if (h := replica_host(r)) is not None))
    replica_request = replace(request, name=None, parent=group, replica_index=index, exclude_machines=used,
                              used_hosts=hosts)
    deployer.events.note(f"replica {index}: renting (machines in use: {len(used)}, on {len(hosts)} host(s))")
    replica = deployer.up(replica_request)
    deployer.current = None  # ready and recorded: a later failure tears it down through the group
    if deployer.rented is not None:
        # It keeps billing while the next replicas load: --max-cost (ci) counts the whole group.
        deployer.still_billing.append(deployer.rented)
        deployer.rented = None
    assert replica.endpoint is not None
    try:
        worker_id = gateway.add_worker(index, worker_url(replica.endpoint), replica.endpoint_key() or "",
                                       replica.tls_certificate)
    except GatewayError:
        assert replica.instance_id is not None
        tear_down(deployer.client, replica.instance_id, pacing=deployer.pacing, store=store, deployment=replica,
                  reason="the gateway did not take it", status="failed")
        raise
    replica = store.update(replica.id, gateway_worker_id=worker_id)
    deployer.events.note(f"replica {index}: checks passed; registered with the gateway")
    return replica


def replica_host(replica: Deployment) -> int | None:
    """The Vast host a replica's machine belongs to, from the offer it was rented from."""
    host = (replica.offer_snapshot or {}).get("host_id")
    return host if isinstance(host, int) else None


def finish(store: StateStore, group_id: str) -> Deployment:
    from glmdeploy.state import utcnow

    live = [r for r in store.replicas_of(group_id) if r.is_active]
    total = sum(r.dph_total or 0.0 for r in live)
    # The group ends with its last replica's watchdog: the latest expiry stands for the set.
    expiries = [r.expires_at for r in live if r.expires_at is not None]
    return store.update(group_id, status="ready", phase="done", ready_at=utcnow(), dph_total=round(total, 4),
                        error=None, expires_at=max(expiries) if expiries and len(expiries) == len(live) else None)


def destroy_group(
    store: StateStore,
    client: VastClient,
    pacing: Pacing,
    group: Deployment,
    *,
    reason: str | None = None,
    status: str = "destroyed",
    note: Callable[[str], None] = lambda _m: None,
    gateway: SmgGateway | None = None,
) -> list[dict[str, Any]]:
    """Deregister every replica, destroy every instance (verified), stop the gateway, close the row."""
    from glmdeploy.teardown import tear_down

    results: list[dict[str, Any]] = []
    if gateway is None and group.gateway_url is not None:
        gateway = attach(group)
    reachable = gateway is not None and gateway.identity() is not None
    orphaned = False
    for replica in store.replicas_of(group.id):
        if gateway is not None and reachable and replica.gateway_worker_id:
            try:
                gateway.remove_worker(replica.gateway_worker_id)
            except GatewayError as exc:
                note(f"{replica.name}: could not deregister ({exc}); destroying it anyway")
        if replica.instance_id is None:
            if replica.is_active:
                store.mark_destroyed(replica.id, status="failed", error=reason)
            _retire(store, replica)
            continue
        result = tear_down(client, replica.instance_id, pacing=pacing, store=store, deployment=replica,
                           reason=reason, status="failed" if status == "failed" else "destroyed")
        note(f"{replica.name}: {result.message()}")
        orphaned = orphaned or result.outcome == "orphaned"
        if result.outcome != "orphaned":
            _retire(store, replica)
        results.append({"name": replica.name, "instance_id": replica.instance_id,
                        "result": "failed" if result.outcome == "orphaned" else
                        ("destroyed" if result.outcome == "destroyed" else "already gone")})
    if gateway is not None:
        gateway.stop()
        note(f"{group.name}: gateway stopped")
    if orphaned:
        with contextlib.suppress(GlmdeployError):
            store.update(group.id, status="orphaned", error="a replica could not be destroyed")
    else:
        store.mark_destroyed(group.id, status="failed" if status == "failed" else "destroyed", error=reason)
    return results


def _retire(store: StateStore, replica: Deployment) -> None:
    from glmdeploy.state import DeploymentReleased, utcnow

    with contextlib.suppress(DeploymentReleased):
        store.update(replica.id, retired_at=utcnow())


def end_if_expired(store: StateStore, group: Deployment, note: Callable[[str], None] = lambda _m: None) -> Deployment:
    """Close a group whose every replica was ended by its own TTL watchdog, and stop its gateway.

    ``reconcile`` closes the row of a replica whose instance vanished and says why; when each one
    of the group's replicas went because its TTL expired, the TTL has ended the group: nothing would
    answer behind the gateway, so the gateway process is stopped too. A replica lost before its TTL
    (a host that died) leaves the group open, for ``scale`` to replace.
    """
    from glmdeploy.lifecycle import TTL_EXPIRED

    if not group.is_group or not group.is_active:
        return group
    replicas = store.replicas_of(group.id)
    if not replicas or any(r.is_active or TTL_EXPIRED not in (r.error or "") for r in replicas):
        return group
    if group.gateway_url is not None:
        attach(group).stop()
    for replica in replicas:
        _retire(store, replica)
    note(f"{group.name}: every replica's TTL expired (the host watchdogs destroyed them); gateway stopped")
    return store.mark_destroyed(group.id, error="TTL expired: every replica's host watchdog destroyed it; "
                                "gateway stopped")


# ---------------------------------------------------------------------------- views


def replica_views(store: StateStore, group: Deployment, gateway: SmgGateway | None = None) -> list[dict[str, Any]]:
    """``[{index, instance_id, endpoint, status, healthy}]`` for the replicas not retired.

    ``lost``: its instance is gone (reconcile closed its row) but nobody retired it. ``healthy``
    is SMG's view of the worker when the gateway answers, else whether the row is ready.
    """
    workers: dict[str, bool] = {}
    if gateway is not None:
        with contextlib.suppress(GatewayError):
            workers = {w.worker_id: w.healthy for w in gateway.workers()}
    views = []
    for r in store.replicas_of(group.id):
        lost = not r.is_active
        healthy = (not lost and r.status == "ready"
                   and (workers.get(r.gateway_worker_id or "", False) if gateway is not None else True))
        views.append({"index": r.replica_index, "name": r.name, "instance_id": r.instance_id,
                      "endpoint": r.endpoint, "status": LOST if lost else r.status, "healthy": healthy,
                      "dph_total": r.dph_total})
    return views


def gateway_view(group: Deployment, gateway: SmgGateway | None) -> dict[str, Any]:
    alive = gateway.alive() if gateway is not None else False
    return {"url": group.gateway_url, "pid": group.gateway_pid, "policy": group.gateway_policy, "alive": alive}


# ---------------------------------------------------------------------------- scale


def scale_group(deployer: Deployer, request: UpRequest, group: Deployment, wanted: int) -> Deployment:
    """Replace lost replicas and rent or remove replicas until ``wanted`` healthy ones are registered.

    A shrink deregisters a replica before it destroys it. A gateway that died is started again on
    the same address, and the live replicas registered with it again.
    """
    from glmdeploy.teardown import tear_down

    store = deployer.store
    note = deployer.events.note
    gateway = attach(group)
    if not gateway.alive():
        gateway.stop()
        from urllib.parse import urlparse

        parts = urlparse(group.gateway_url or "")
        gateway = SmgGateway.start(host=parts.hostname or "127.0.0.1", port=parts.port or 0,
                                   policy=group.gateway_policy or DEFAULT_POLICY, key=group.gateway_key())
        group = store.update(group.id, gateway_pid=gateway.pid)
        note(f"gateway was down: restarted on {gateway.url}, pid {gateway.pid}")
        for r in store.replicas_of(group.id):
            if r.is_active and r.endpoint:
                worker_id = gateway.add_worker(r.replica_index or 0, worker_url(r.endpoint), r.endpoint_key() or "",
                                               r.tls_certificate)
                store.update(r.id, gateway_worker_id=worker_id)
    replicas = store.replicas_of(group.id)
    registered = {w.worker_id: w for w in _workers(gateway)}
    for r in replicas:
        if not r.is_active:
            if r.gateway_worker_id in registered:
                gateway.remove_worker(r.gateway_worker_id or "")
            _retire(store, r)
            note(f"{r.name}: lost; deregistered")
    live = [r for r in store.replicas_of(group.id) if r.is_active]
    next_index = max((r.replica_index or 0 for r in store.replicas_of(group.id, include_retired=True)),
                     default=-1) + 1
    group = store.update(group.id, replicas_wanted=wanted)
    try:
        while len(live) < wanted:
            live.append(add_replica(deployer, request, group, gateway, next_index))
            next_index += 1
    except BaseException:
        with deployer.shield(), contextlib.suppress(GlmdeployError):
            deployer.abort("scale failed")
        finish(store, group.id)
        raise
    for r in sorted(live, key=lambda r: r.replica_index or 0)[wanted:]:
        if r.gateway_worker_id:
            gateway.remove_worker(r.gateway_worker_id)
        assert r.instance_id is not None
        with deployer.shield():
            result = tear_down(deployer.client, r.instance_id, pacing=deployer.pacing, store=store, deployment=r,
                               reason="scaled down")
        note(f"{r.name}: deregistered; {result.message()}")
        if result.outcome != "orphaned":
            _retire(store, r)
    return finish(store, group.id)


def _workers(gateway: SmgGateway) -> list[Any]:
    try:
        return gateway.workers()
    except GatewayError:
        return []
