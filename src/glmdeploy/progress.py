"""How `up` and `ci` show progress: NDJSON events on stdout, or a live display on stderr."""

from __future__ import annotations

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


class TerminalEvents:
    """Human progress on stderr: a line per phase and a spinner on the current one."""

    def __init__(self) -> None:
        from glmdeploy.commands._common import console

        self.console = console(stderr=True)
        self.status = self.console.status("starting")
        self.status.start()

    def phase(self, phase: Phase, elapsed_s: float, **detail: Any) -> None:
        extra = " ".join(f"{k}={v}" for k, v in detail.items() if v is not None)
        self.console.print(f"[dim]{elapsed_s:7.1f}s[/] {phase.value.replace('_', ' ')} {extra}".rstrip())
        self.status.update(phase.value.replace("_", " ") + " ...")

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

    def close(self) -> None:
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
