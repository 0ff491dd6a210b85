"""Health after ready: is a ready deployment's engine still serving, and what `list` remembers of it.

``status`` and ``smoke`` probe the endpoint with the engine's own health rule (``engines.health``). A
ready deployment whose engine died is reported ``unhealthy`` with the reason, and the reason is kept in
the row's ``error`` as ``unhealthy: ...`` so ``list`` shows it without probing every endpoint. The
deployment's ``status`` stays ``ready`` (the statuses are fixed by shared/spec/cli.md): the instance
still exists and bills, which is what ``status`` tracks; ``health`` says whether it serves.

A later healthy probe clears the mark.

Limit: LightLLM keeps its HTTP server, and ``/health`` 200, for a long time after its router died (4
failed background checks of 100-400 s each, lightllm/utils/health_check.py @fc72ffab), so ``status``
calls it healthy meanwhile; ``smoke``'s chat check is what finds it (it times out).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from glmdeploy.engines.health import HealthReading, HealthState

if TYPE_CHECKING:
    import httpx

    from glmdeploy.state import Deployment, StateStore

UNHEALTHY_PREFIX = "unhealthy: "


def unhealthy_reason(reading: HealthReading) -> str | None:
    """Why a reading means the engine does not serve, or None when it does (or nothing is known)."""
    if reading.state is HealthState.HEALTHY or reading.state is HealthState.UNREACHABLE:
        return None
    if reading.state is HealthState.REFUSED:
        return f"the engine exited: {reading.describe()} (connection refused)"
    if reading.state is HealthState.STARTING:
        return f"the engine is not ready: {reading.describe()}"
    return f"the engine does not answer its health check: {reading.describe()}"


def endpoint_client(d: Deployment) -> httpx.Client:
    """The client for a deployment's endpoint: over TLS, one that accepts only its pinned certificate
    (``CertificateMismatch``, exit 9, before anything is sent); an older plain-http row gets a plain client."""
    import httpx

    from glmdeploy.tls import EndpointTrust, pinned_client

    assert d.endpoint is not None
    trust = EndpointTrust(fingerprint=d.tls_fingerprint, certificate_pem=d.tls_certificate)
    return pinned_client(d.endpoint, trust, timeout=httpx.Timeout(30.0, connect=5.0))


def probe_deployment(d: Deployment, http: httpx.Client) -> HealthReading:
    from glmdeploy.engines import get_engine
    from glmdeploy.engines.health import probe_health

    assert d.endpoint is not None
    engine = get_engine(str(d.profile_snapshot["engine"]["kind"]))
    return probe_health(engine, http, d.endpoint.removesuffix("/v1"), d.endpoint_key())


def record(store: StateStore, d: Deployment, reason: str | None) -> Deployment:
    """Keep (or clear) the unhealthy mark of a ready deployment; other rows are left alone."""
    if d.status != "ready":
        return d
    marked = recorded_reason(d)
    if reason is not None and marked != reason:
        return store.update(d.id, error=UNHEALTHY_PREFIX + reason)
    if reason is None and marked is not None:
        return store.update(d.id, error=None)
    return d


def judge(store: StateStore, d: Deployment, reading: HealthReading) -> tuple[str, str | None, Deployment]:
    """``status``'s verdict on a probe: (health, reason, the row), keeping the unhealthy mark up to date.

    Unreachable says nothing about the engine (the network, a firewall), so it leaves the mark alone.
    """
    if reading.state is HealthState.UNREACHABLE:
        return "unreachable", reading.describe(), d
    reason = unhealthy_reason(reading)
    return ("unhealthy" if reason else "healthy"), reason, record(store, d, reason)


def recorded_reason(d: Deployment) -> str | None:
    if d.status == "ready" and d.error and d.error.startswith(UNHEALTHY_PREFIX):
        return d.error.removeprefix(UNHEALTHY_PREFIX)
    return None


def view_fields(d: Deployment) -> dict[str, str | None]:
    """``health`` and ``health_reason`` for ``list``: what the last ``status`` or ``smoke`` found.

    ``health`` is ``unhealthy`` when that probe found the engine dead, None when nothing says so.
    """
    reason = recorded_reason(d)
    return {"health": "unhealthy" if reason else None, "health_reason": reason}
