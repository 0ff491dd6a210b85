"""The planner's KV pool against what the engine itself reported (issue 11 §5).

``up`` stores both in the state DB (``kv_tokens_planned*`` and ``kv_tokens_reported``); ``status``
shows them side by side, and a deviation over ``NOTE_ABOVE_PERCENT`` gets a line of its own, so
every real rental is a calibration point for ``glmdeploy.engines.*_memory``. Pure: no I/O.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from glmdeploy.state import Deployment

NOTE_ABOVE_PERCENT = 2.0


def kv_capacity(d: Deployment) -> dict[str, Any] | None:
    """Planned vs reported KV tokens, the deviation and a note when it exceeds 2%; None if neither is known."""
    planned, reported = d.kv_tokens_planned, d.kv_tokens_reported
    if planned is None and reported is None:
        return None
    deviation = None
    if planned and reported is not None:
        deviation = round((reported - planned) / planned * 100, 2)
    low, high = d.kv_tokens_planned_low, d.kv_tokens_planned_high
    inside = None if reported is None or low is None or high is None else low <= reported <= high
    note = None
    if deviation is not None and abs(deviation) > NOTE_ABOVE_PERCENT:
        direction = "more" if deviation > 0 else "fewer"
        note = (
            f"the engine reported {reported:,} KV tokens, {abs(deviation):.1f}% {direction} than the planned "
            f"{planned:,}" + ("" if inside else " and outside the planner's band")
            + ": a calibration point for the planner (docs/planner.md)"
        )
    return {
        "planned": planned,
        "planned_low": low,
        "planned_high": high,
        "reported": reported,
        "deviation_percent": deviation,
        "inside_band": inside,
        "note": note,
    }


def render(view: dict[str, Any]) -> list[str]:
    """Lines for ``status``."""
    planned = f"{view['planned']:,}" if view["planned"] is not None else "-"
    band = (
        f" ({view['planned_low']:,} - {view['planned_high']:,})"
        if view["planned_low"] is not None and view["planned_high"] is not None
        else ""
    )
    reported = f"{view['reported']:,}" if view["reported"] is not None else "not seen in the log"
    deviation = f" ({view['deviation_percent']:+.1f}%)" if view["deviation_percent"] is not None else ""
    lines = [f"  KV pool:  planned {planned}{band} vs reported {reported}{deviation} tokens"]
    if view["note"]:
        lines.append(f"  note:     {view['note']}")
    return lines
