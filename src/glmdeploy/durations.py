"""Durations as users write them: ``90s``, ``45m``, ``2h``, ``1h30m`` or plain seconds."""

from __future__ import annotations

import re

from glmdeploy.errors import UsageError

_PART = re.compile(r"(\d+(?:\.\d+)?)([smhd])")
_UNIT = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
# No timeout or TTL of a rented GPU needs more than a year; beyond it lie dates that overflow (9999999999d).
MAX_DURATION_S = 366 * 86400.0


def parse_duration(text: str | int | float, *, option: str = "duration") -> float:
    """Seconds in ``text``; raises ``UsageError`` naming ``option`` when it does not parse."""
    if isinstance(text, bool):
        raise UsageError(f"{option}: expected a duration like 90s, 45m or 2h, got {text!r}")
    if isinstance(text, int | float):
        seconds = float(text)
    else:
        raw = text.strip().lower()
        if re.fullmatch(r"\d+(?:\.\d+)?", raw):
            seconds = float(raw)
        else:
            pos = 0
            seconds = 0.0
            for match in _PART.finditer(raw):
                if match.start() != pos:
                    break
                seconds += float(match.group(1)) * _UNIT[match.group(2)]
                pos = match.end()
            if pos != len(raw) or not raw:
                raise UsageError(f"{option}: expected a duration like 90s, 45m or 2h, got {text!r}")
    if not seconds > 0:  # also nan, from a float argument
        raise UsageError(f"{option}: must be positive, got {text!r}")
    if seconds > MAX_DURATION_S:
        raise UsageError(f"{option}: {text!r} is longer than {MAX_DURATION_S / 86400:g} days")
    return seconds


def format_duration(seconds: float) -> str:
    whole = round(seconds)
    if whole % 3600 == 0:
        return f"{whole // 3600}h"
    if whole % 60 == 0:
        return f"{whole // 60}m"
    return f"{whole}s"


def human_duration(seconds: float, *, precise: bool = False) -> str:
    """A duration people read at a glance: ``42s``, ``12m`` (``12m05s`` when precise), ``3h05m``, ``2d04h``."""
    whole = max(0, int(seconds))
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        minutes, secs = divmod(whole, 60)
        return f"{minutes}m{secs:02d}s" if precise else f"{minutes}m"
    if whole < 48 * 3600:
        hours, rest = divmod(whole, 3600)
        return f"{hours}h{rest // 60:02d}m"
    days, rest = divmod(whole, 86400)
    return f"{days}d{rest // 3600:02d}h"
