"""Keeping local records and Vast.ai in agreement, and tearing deployments down for sure.

``reconcile`` runs before ``list``, ``status`` and ``destroy --orphans``. It merges the local
rows with the instances Vast.ai reports under our label prefix:

- a row whose instance is gone (destroyed in the console, by the TTL watchdog, expired) is marked
  destroyed;
- a labelled instance with no active row, or whose row is stuck mid-``up`` because the process
  that owned it died (crash, kill -9), or whose row says ``orphaned``, is an *orphan*: it bills
  and nobody is watching it;
- but a labelled instance with no row whose label names another owner (``glmdeploy.ownership``)
  is *foreign*: a teammate's or CI's live deployment, never this machine's to destroy.

``destroy_instance`` destroys and then checks the instance is really gone, because a destroy
that was accepted is not yet a destroy that happened.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from glmdeploy.errors import GlmdeployError

if TYPE_CHECKING:
    from glmdeploy.state import Deployment, StateStore
    from glmdeploy.vast.client import VastClient
    from glmdeploy.vast.models import Instance

LABEL_PREFIX = "glmdeploy:"
IN_FLIGHT = frozenset({"creating", "starting", "loading", "destroying"})


@dataclass(frozen=True)
class Orphan:
    instance_id: int
    label: str | None
    reason: str
    deployment: Deployment | None
    dph_total: float | None
    started_at: float | None = None  # Vast's start_date (epoch seconds), for --older-than


@dataclass(frozen=True)
class Foreign:
    """A glmdeploy instance of another owner scope (another machine, CI, an older glmdeploy).

    Read-only by default: ``list`` shows it, ``destroy --orphans`` leaves it alone.
    """

    instance_id: int
    label: str
    owner: str | None  # None: the old label form without an owner
    dph_total: float | None
    status: str | None
    started_at: float | None


@dataclass
class Reconciled:
    api_url: str
    instances: dict[str, Instance] = field(default_factory=dict)
    orphans: list[Orphan] = field(default_factory=list)
    foreign: list[Foreign] = field(default_factory=list)
    marked_gone: list[str] = field(default_factory=list)
    # Real seconds per provider second (Pacing.scale): a sandbox's clock runs faster. Ages use it.
    time_scale: float = 1.0


def owner_alive(deployment: Deployment) -> bool:
    """Whether the process that runs this deployment's ``up`` still exists on this machine."""
    from glmdeploy.processes import pid_alive

    pid = deployment.owner_pid
    return pid is not None and pid > 0 and pid_alive(pid)


def reconcile(
    store: StateStore,
    client: VastClient,
    api_url: str,
    *,
    own: frozenset[str] | None = None,
    time_scale: float = 1.0,
) -> Reconciled:
    """Merge the rows created on ``api_url`` with the labelled instances it reports.

    An untracked instance is an orphan only when its label's owner is one of ``own`` (default: the
    store's own scopes, ``glmdeploy.ownership.own_scopes``); otherwise it is foreign.
    """
    from glmdeploy.ownership import own_scopes, parse_label

    if own is None:
        own = own_scopes(store.path.parent)
    result = Reconciled(api_url=api_url, time_scale=time_scale)
    live = {
        inst.label: inst
        for inst in client.list_instances(label_prefix=LABEL_PREFIX)
        if inst.label and inst.actual_status not in ("destroyed",)
    }
    result.instances = dict(live)
    for d in store.list(include_destroyed=True):
        if d.api_url != api_url or d.is_group:
            continue  # a replica group rents nothing itself: its replicas are rows of their own
        inst = live.pop(d.label, None)
        if not d.is_active:
            if inst is not None:
                result.orphans.append(
                    Orphan(inst.id, inst.label, f"its record says {d.status} but it still exists", d, inst.dph_total)
                )
            continue
        if inst is None:
            if d.status in IN_FLIGHT and owner_alive(d):
                continue  # an `up` or `destroy` in another process is still working on it
            if d.instance_id is None and d.status == "creating":
                store.mark_destroyed(d.id, status="failed", error="interrupted before an instance was rented")
            else:
                store.mark_destroyed(d.id, status="destroyed", error=d.error or _gone_reason(d))
            result.marked_gone.append(d.name)
            continue
        if d.status == "orphaned":
            result.orphans.append(Orphan(inst.id, inst.label, d.error or "cleanup failed earlier", d, inst.dph_total))
        elif d.status in IN_FLIGHT and not owner_alive(d):
            store.update(d.id, status="orphaned", error=f"the process running it died during '{d.phase}'")
            result.orphans.append(Orphan(inst.id, inst.label, f"stuck in '{d.status}': its process died", d,
                                         inst.dph_total))
        if d.instance_id is None:
            store.update(d.id, instance_id=inst.id, machine_id=inst.machine_id)
    for label, inst in live.items():
        parts = parse_label(label)
        owner = parts.owner if parts is not None else None
        if owner is not None and owner in own:
            result.orphans.append(Orphan(inst.id, label, f"no local record under owner {owner} (a lost state DB, "
                                         "or another machine sharing the scope)", None, inst.dph_total,
                                         inst.start_date))
        else:
            result.foreign.append(Foreign(inst.id, label, owner, inst.dph_total, inst.actual_status, inst.start_date))
    return result


# How ``_gone_reason`` says the TTL watchdog ended an instance (a replica group ends when all its replicas did).
TTL_EXPIRED = "TTL expired"


def _gone_reason(deployment: Deployment) -> str:
    """Why an instance of an active record no longer exists, as far as this side can tell."""
    from datetime import timedelta

    from glmdeploy.state import utcnow
    from glmdeploy.ttl import OVERDUE_GRACE_S, clock_scale

    # The watchdog starts with the container, a poll before `up` saw it running and recorded expires_at.
    early = timedelta(seconds=OVERDUE_GRACE_S * clock_scale(deployment.api_url))
    if deployment.expires_at is not None and utcnow() >= deployment.expires_at - early:
        expired = deployment.expires_at.isoformat(timespec="seconds")
        return f"its {TTL_EXPIRED} at {expired}: the host watchdog destroyed it"
    return "instance no longer exists on Vast.ai"


def sandbox_gone(api_url: str | None) -> bool:
    """Whether ``api_url`` is a local sandbox's address where nothing listens any more.

    A sandbox keeps its instances in its own process: when that process is gone, so are they (a
    sandbox restarted on the same port starts with an empty market). Only a refused connection
    counts; anything that answers, or a remote URL, is not "gone".
    """
    import httpx

    from glmdeploy.connect import is_local

    if not is_local(api_url):
        return False
    try:
        httpx.get(f"{api_url}/_sandbox/health", timeout=2.0, trust_env=False)
    except httpx.ConnectError:
        return True
    except httpx.HTTPError:
        return False
    return False


def close_if_sandbox_gone(store: StateStore, deployment: Deployment) -> bool:
    """Close the record of a deployment whose sandbox has stopped; True if it did."""
    if not deployment.is_active or not sandbox_gone(deployment.api_url):
        return False
    if deployment.is_group and deployment.gateway_url is not None:
        from glmdeploy.replicas import attach

        attach(deployment).stop()  # its replicas ended with the sandbox: the gateway has nothing to route to
    store.mark_destroyed(deployment.id, status="destroyed",
                         error=deployment.error or "its sandbox stopped; the instance ended with it")
    return True


def destroy_and_verify(
    client: VastClient,
    instance_id: int,
    *,
    sleep: Callable[[float], None] = time.sleep,
    pause: float = 2.0,
    checks: int = 5,
) -> bool:
    """Destroy ``instance_id`` and wait until Vast.ai no longer shows it.

    Returns False when it was already gone. Raises ``GlmdeployError`` if it is still there after
    the checks, so the caller keeps it recorded as orphaned instead of claiming success.
    """
    destroyed_now = client.destroy_instance(instance_id)
    for attempt in range(checks):
        instance = client.show_instance(instance_id)
        if instance is None:
            return destroyed_now
        sleep(pause * (attempt + 1))
    raise GlmdeployError(f"instance {instance_id} still exists after destroy")
