"""How `up`, `ci` and `scale` show progress: NDJSON events on stdout, or a display on stderr.

On a terminal the display is one live line under the phase lines: the phase and its elapsed time,
the instance's ``status_msg``, the engine's startup stage with a percentage and ETA (loadprogress.py),
the dollars spent at the offer's $/h and the TTL's expiry; it keeps ticking between polls. Without a
terminal (a CI log) it prints a line per phase change and at most one progress line per minute of the
provider's time (the sandbox's clock runs faster). ``--json`` gets every poll as a ``progress`` event.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from glmdeploy.commands._common import emit_json

if TYPE_CHECKING:
    from glmdeploy.deploy import Phase
    from glmdeploy.ranking import RankedOffer


class JsonEvents:
    """NDJSON on stdout: one object per phase change (shared/spec/cli.md)."""

    def phase(self, phase: Phase, elapsed_s: float, **detail: Any) -> None:
        emit_json({"event": "phase", "phase": phase.value, "elapsed_s": elapsed_s, **detail})

    def note(self, message: str) -> None:
        emit_json({"event": "note", "message": message})

    def offers(self, ranked: Any) -> None:
        emit_json({"event": "offers", "offers": [_offer_view(r) for r in ranked]})

    def progress(self, **fields: Any) -> None:
        fields.pop("clock_scale", None)
        emit_json({"event": "progress", **fields})


PLAIN_PROGRESS_EVERY_S = 60.0


def progress_text(fields: dict[str, Any], since_s: float = 0.0) -> str:
    """One line for a ``progress`` snapshot, ``since_s`` provider seconds after it was taken."""
    from glmdeploy.durations import human_duration

    phase = str(fields.get("phase", "")).replace("_", " ")
    in_phase = human_duration(fields["phase_elapsed_s"] + since_s, precise=True)
    parts = [f"{phase} {in_phase} (total {human_duration(fields['elapsed_s'] + since_s, precise=True)})"]
    if fields.get("stage"):
        stage = str(fields["stage"])
        percent = fields.get("percent")
        if percent is not None:
            stage += f" {'~' if fields.get('estimated') else ''}{percent:.0f}%"
        eta = fields.get("eta_s")
        if eta is not None and (percent is None or percent < 100):
            left = human_duration(max(0.0, eta - since_s), precise=True)
            stage += f" ETA {'~' if fields.get('estimated') else ''}{left}"
        elif fields.get("estimated") and percent is not None:
            stage += " (slower than the offer's speed)"
        parts.append(stage)
    dph = fields.get("dph_total")
    if dph is not None:
        spent = fields.get("spent_usd", 0.0) + dph * since_s / 3600
        parts.append(f"${spent:.3f} spent at ${dph:.3f}/h")
    if fields.get("expires_at"):
        parts.append(f"TTL until {_short_time(str(fields['expires_at']))}")
    if fields.get("status_msg"):
        # Last: the least important, and the first a narrow terminal cuts.
        parts.append(str(fields["status_msg"])[:60])
    return " · ".join(parts)


def _short_time(iso: str) -> str:
    """``2026-12-05T04:41:12+00:00`` as ``12-05 04:41Z``: the live line must fit a terminal."""
    from datetime import UTC, datetime

    try:
        when = datetime.fromisoformat(iso).astimezone(UTC)
    except ValueError:
        return iso
    return f"{when:%m-%d %H:%M}Z"


class _LiveLine:
    """The live line's renderable: rendered at every refresh, so elapsed, ETA and dollars keep moving."""

    def __init__(self) -> None:
        self.fields: dict[str, Any] | None = None
        self.taken_at = 0.0
        self.scale = 1.0
        self.text = "starting"

    def __rich__(self) -> Any:
        from rich.text import Text

        if self.fields is None:
            return Text(self.text, no_wrap=True, overflow="ellipsis")
        since = (time.monotonic() - self.taken_at) / self.scale
        # One line, cut at the terminal's edge: a wrapped live line leaves copies of itself behind.
        return Text(progress_text(self.fields, since), no_wrap=True, overflow="ellipsis")


class TerminalEvents:
    """Human progress on stderr: a line per phase, and a live line (terminal) or a line a minute (log)."""

    def __init__(self) -> None:
        from glmdeploy.commands._common import console

        self.console = console(stderr=True)
        self.live = self.console.is_terminal
        self.line = _LiveLine()
        self.status = self.console.status(self.line)
        self._last_plain: float | None = None
        if self.live:
            self.status.start()

    def phase(self, phase: Phase, elapsed_s: float, **detail: Any) -> None:
        extra = " ".join(f"{k}={v}" for k, v in detail.items() if v is not None)
        self.console.print(f"[dim]{elapsed_s:7.1f}s[/] {phase.value.replace('_', ' ')} {extra}".rstrip(),
                           highlight=False)
        self.line.fields = None
        self.line.text = phase.value.replace("_", " ") + " ..."

    def progress(self, **fields: Any) -> None:
        scale = float(fields.pop("clock_scale", 1.0) or 1.0)
        if self.live:
            self.line.fields, self.line.taken_at, self.line.scale = fields, time.monotonic(), scale
            return
        now = float(fields["elapsed_s"])
        if self._last_plain is None or now - self._last_plain >= PLAIN_PROGRESS_EVERY_S:
            self._last_plain = now
            self.console.print("progress: " + progress_text(fields), highlight=False, soft_wrap=True)

    def note(self, message: str) -> None:
        self.console.print(f"        [yellow]{message}[/]", highlight=False)

    def offers(self, ranked: Any) -> None:
        from rich.table import Table

        table = Table("score", "offer", "$/h", "GPU", "reliability", "down Mb/s", "download min", "location")
        for r in ranked:
            o = r.offer
            table.add_row(
                f"{r.score:.0f}",
                str(o.id),
                f"{o.dph_total:.3f}" if o.dph_total is not None else "?",
                f"{o.num_gpus}x {o.gpu_name}",
                f"{r.reliability:.3f}" if r.reliability is not None else "?",
                f"{o.inet_down:.0f}" if o.inet_down is not None else "?",
                f"{r.download_minutes:.0f}",
                o.geolocation or "",
            )
        self.console.print(table)

    def pause(self) -> None:
        if self.live:
            self.status.stop()

    def resume(self) -> None:
        if self.live:
            self.status.start()

    def close(self) -> None:
        if self.live:
            self.status.stop()


def _offer_view(r: RankedOffer) -> dict[str, Any]:
    o: Any = r.offer
    return {
        "id": o.id,
        "machine_id": getattr(o, "machine_id", None),
        "gpu_name": getattr(o, "gpu_name", None),
        "num_gpus": getattr(o, "num_gpus", None),
        "dph_total": o.dph_total,
        "reliability": r.reliability,
        "inet_down": getattr(o, "inet_down", None),
        "score": round(r.score, 2),
    }
