"""The host-side TTL watchdog: its default, the checks on ``--ttl``, and whether one is overdue.

``up`` arms the watchdog by default (the readiness timeout plus ``DEFAULT_TTL_MARGIN_S``), so an
``up`` that dies without cleaning up (kill -9, a crashed laptop) leaks at most that long. The
watchdog runs in the instance's onstart script, so it starts with the container; glmdeploy records
when it fires as the deployment's ``expires_at`` (wall clock; on the sandbox, whose clock runs
``time_scale`` times faster, the provider duration times the scale).
"""

from __future__ import annotations

from datetime import datetime

from glmdeploy.durations import format_duration, parse_duration
from glmdeploy.errors import UsageError

# Beyond the readiness timeout, how long the watchdog lets an instance live by default: time to use
# a fresh deployment, and the most a crashed `up` can leak.
DEFAULT_TTL_MARGIN_S = 1800.0
# Provider seconds past expires_at before a still-running instance is called overdue: the watchdog
# retries its destroy every 20 s, and the host's clock may be a little off.
OVERDUE_GRACE_S = 120.0
NO_TTL = "none"


def default_ttl(timeout_s: float) -> float:
    return timeout_s + DEFAULT_TTL_MARGIN_S


def resolve_ttl(text: str | None, *, timeout_s: float, force: bool = False, allow_none: bool = True) -> float | None:
    """Seconds the watchdog waits, or None for ``--ttl none``.

    No value means the default. A TTL shorter than the readiness timeout would destroy the instance
    before it can be ready: refused unless ``force``.
    """
    if text is None:
        return default_ttl(timeout_s)
    if text.strip().lower() == NO_TTL:
        if not allow_none:
            raise UsageError(
                "--ttl none is not allowed here: the watchdog is what destroys the instance if the job is killed",
                hint=f"pass a duration, or leave --ttl out for the default ({format_duration(default_ttl(timeout_s))})",
            )
        return None
    ttl = parse_duration(text, option="--ttl")
    if ttl < timeout_s and not force:
        raise UsageError(
            f"--ttl {text} is shorter than the readiness timeout ({format_duration(timeout_s)}): the watchdog "
            "would destroy the instance before it could be ready",
            hint="pass a longer --ttl (or a shorter --timeout), or --force to use it anyway",
        )
    return ttl


NO_TTL_WARNING = (
    "warning: --ttl none: no watchdog on the host; if this process dies the instance bills until you "
    "run 'glmdeploy destroy'"
)


def overdue(expires_at: datetime | None, now: datetime, *, still_running: bool, scale: float = 1.0) -> bool:
    """Whether the watchdog should have destroyed an instance that still exists (plus a small grace)."""
    if expires_at is None or not still_running:
        return False
    return (now - expires_at).total_seconds() > OVERDUE_GRACE_S * scale


def describe(expires_at: datetime | None, now: datetime, *, is_overdue: bool) -> str:
    """For a table cell: "in 41m", "OVERDUE 3m", "expired" or "-"."""
    if expires_at is None:
        return "-"
    left = (expires_at - now).total_seconds()
    if is_overdue:
        return f"OVERDUE {_human(-left)}"
    if left <= 0:
        return "expired"
    return f"in {_human(left)}"


def _human(seconds: float) -> str:
    whole = max(1, round(seconds))
    if whole >= 3600:
        return f"{whole // 3600}h{whole % 3600 // 60:02d}m"
    if whole >= 60:
        return f"{whole // 60}m"
    return f"{whole}s"


def clock_scale(api_url: str | None) -> float:
    """Real seconds per provider second at ``api_url``: the recorded sandbox's time scale, else 1."""
    from glmdeploy.connect import is_local

    if not is_local(api_url):
        return 1.0
    from glmdeploy.sandbox.process import read_state

    info = read_state()
    return info.time_scale if info is not None and info.url == api_url else 1.0
