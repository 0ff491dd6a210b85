"""The one health probe: what an engine's health endpoint says, read by the engine's own rules.

``up`` (readiness), ``status``, ``smoke`` and the wait for a dead engine all call ``probe_health``;
what each answer means is the engine's (``Engine.health_path``, ``Engine.health_read_timeout_s``,
``Engine.read_health``), so a fourth engine changes only its module.

A probe distinguishes "the port refuses connections" from "the port answers": an engine whose port
once answered and now refuses has exited (real-vllm-0.24.0/engine-death.txt: the whole API server
exits within about a second of its engine core dying, and the port refuses from then on).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING

import httpx

if TYPE_CHECKING:
    from glmdeploy.engines.base import Engine


class HealthState(StrEnum):
    HEALTHY = "healthy"  # the health path answered 200
    STARTING = "starting"  # the port answers but the engine says it is not ready yet (SGLang warmup: 503)
    UNHEALTHY = "unhealthy"  # the port answers with something else, or the connection broke mid-answer
    REFUSED = "refused"  # nothing listens on the port: not started yet, or exited
    UNREACHABLE = "unreachable"  # timeout or network error: nothing known about the engine


@dataclass(frozen=True)
class HealthReading:
    state: HealthState
    path: str
    status_code: int | None = None
    detail: str = ""

    @property
    def healthy(self) -> bool:
        return self.state is HealthState.HEALTHY

    @property
    def port_answers(self) -> bool:
        """Something listens on the port (a live server, even a broken one)."""
        return self.state in (HealthState.HEALTHY, HealthState.STARTING, HealthState.UNHEALTHY)

    def describe(self) -> str:
        if self.status_code is not None:
            return f"GET {self.path}: HTTP {self.status_code}"
        return f"GET {self.path}: {self.detail or self.state.value}"


def probe_health(
    engine: Engine | None,
    http: httpx.Client,
    root: str,
    api_key: str | None = None,
    *,
    timeout_s: float | None = None,
) -> HealthReading:
    """GET the engine's health path under ``root`` (the URL without ``/v1``) once; never raises.

    ``engine`` None means a server of unknown kind: ``/health``, read as 200 = healthy.
    """
    path = engine.health_path if engine is not None else "/health"
    read = engine.health_read_timeout_s if engine is not None else None
    if timeout_s is not None:
        read = max(read or 0.0, timeout_s)
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        if read is not None:
            response = http.get(root + path, headers=headers, timeout=httpx.Timeout(read, connect=5.0))
        else:
            response = http.get(root + path, headers=headers)
    except httpx.ConnectError as exc:
        # ECONNREFUSED (and a reset during connect) is "nothing listens"; a DNS or route failure is not.
        refused = "refused" in str(exc).lower() or "errno 111" in str(exc).lower()
        return HealthReading(HealthState.REFUSED if refused else HealthState.UNREACHABLE, path,
                             detail="connection refused" if refused else type(exc).__name__)
    except (httpx.RemoteProtocolError, httpx.ReadError) as exc:
        # Accepted, then dropped: a server was there and broke off (an engine dying under the request).
        return HealthReading(HealthState.UNHEALTHY, path, detail=f"connection dropped ({type(exc).__name__})")
    except httpx.HTTPError as exc:
        return HealthReading(HealthState.UNREACHABLE, path, detail=type(exc).__name__)
    state = engine.read_health(response.status_code) if engine is not None else (
        HealthState.HEALTHY if response.status_code == 200 else HealthState.UNHEALTHY
    )
    return HealthReading(state, path, status_code=response.status_code)


__all__ = ["HealthReading", "HealthState", "probe_health"]
