"""``status NAME --watch``: health, uptime, cost and the engine's load, refreshed until Ctrl-C (issue 13).

Each refresh does what ``status`` does (reconcile with the API server, probe the endpoint's health
with the engine's own rule and keep ``list``'s unhealthy mark up to date) and also reads the engine's
``/metrics`` (``engines.metrics``) through the same pinned client; SGLang without ``--enable-metrics`` has
none, so its load comes from its log's batch lines (``engines.sglang_log_load``, one Vast log fetch per
30 s). Uptime and cost are ``status``'s own clock (``deployments._view``). Watching never changes the
deployment: Ctrl-C ends the watch, exit 0, and the instance keeps running (and billing) until ``destroy``.

Output: on a terminal one block redrawn in place (rich Live); otherwise one line per refresh;
``--json`` one ``WatchSample`` object per line.
"""

from __future__ import annotations

import time
from datetime import datetime
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field

from glmdeploy.commands._common import console, emit_json

if TYPE_CHECKING:
    from glmdeploy.connect import Connection
    from glmdeploy.engines.metrics import EngineLoad
    from glmdeploy.engines.sglang_log_load import ThrottledLogLoad
    from glmdeploy.state import Deployment, StateStore


class WatchSample(BaseModel):
    """One refresh of ``status --watch``."""

    name: str
    at: datetime = Field(description="When the sample was taken (UTC).")
    status: str
    instance_status: str | None = Field(None, description="What the API server says of the instance.")
    health: str | None = Field(None, description="healthy, unhealthy or unreachable; None when not probed.")
    health_reason: str | None = None
    uptime_s: int
    cost_so_far: float
    dph_total: float | None
    expires: str | None
    running: float | None = Field(None, description="Requests the engine is running.")
    waiting: float | None = Field(None, description="Requests queued in the engine.")
    kv_cache_usage: float | None = Field(None, description="KV cache in use, 0..1.")
    metrics_note: str | None = Field(None, description="Why a load figure is missing, or where it is from.")
    load_source: str | None = Field(
        None, description='"metrics" (the engine\'s /metrics) or "log" (its log lines); None: no figures.')


def _launch_argv(d: Deployment) -> list[str]:
    """The engine argv the deployment was launched with (from its profile snapshot)."""
    from glmdeploy.engines import get_engine
    from glmdeploy.profiles import Profile

    try:
        profile = Profile.model_validate(d.profile_snapshot)
        return [str(a) for a in get_engine(profile.engine.kind).argv(profile)]
    except Exception:  # an old or foreign snapshot: no launch facts, so no --enable-metrics known
        return []


# One throttled log reader per deployment and instance, for the life of one watch() loop.
_LOG_READERS: dict[tuple[str, int], ThrottledLogLoad] = {}


def _load_from_log(d: Deployment, conn: Connection | None, kind: str, argv: list[str]) -> EngineLoad | None:
    """SGLang without ``--enable-metrics`` serves no /metrics: its load from the batch lines of the
    instance log (``engines.sglang_log_load``), fetched through Vast as ``glmdeploy logs`` does, at
    most once per 30 s. None: this deployment's load comes from /metrics."""
    from glmdeploy.engines.metrics import unavailable_reason
    from glmdeploy.engines.sglang_log_load import LOG_TAIL_LINES, LogFetchError, ThrottledLogLoad

    if kind != "sglang" or unavailable_reason(kind, argv) is None or conn is None or d.instance_id is None:
        return None
    key = (d.id, d.instance_id)
    if key not in _LOG_READERS:
        from glmdeploy.vast.errors import VastError

        client, instance_id = conn.client, d.instance_id

        def fetch() -> str:
            try:
                return client.request_logs(instance_id, tail=LOG_TAIL_LINES)
            except VastError as exc:
                raise LogFetchError(str(exc)) from None

        _LOG_READERS[key] = ThrottledLogLoad(fetch)
    return _LOG_READERS[key].read()


def sample(store: StateStore, d: Deployment, conn: Connection | None) -> tuple[Deployment, WatchSample]:
    from glmdeploy import deployment_health
    from glmdeploy.commands.deployments import _view
    from glmdeploy.engines.metrics import EngineLoad, probe_load
    from glmdeploy.lifecycle import reconcile
    from glmdeploy.state import utcnow

    live = None
    health = reason = None
    load = EngineLoad(note="not serving")
    if d.is_active and conn is not None:
        reconciled = reconcile(store, conn.client, conn.api_url)
        inst = reconciled.instances.get(d.label)
        live = (inst.actual_status or "provisioning") if inst else "gone"
        d = store.get(d.id)
    if d.endpoint and d.is_active:
        root = d.endpoint.removesuffix("/v1")
        with deployment_health.endpoint_client(d) as http:
            reading = deployment_health.probe_deployment(d, http)
            health, reason, d = deployment_health.judge(store, d, reading)
            if reading.port_answers:
                kind = str(d.profile_snapshot["engine"]["kind"])
                argv = _launch_argv(d)
                load = _load_from_log(d, conn, kind, argv) or probe_load(kind, argv, http, root, d.endpoint_key())
            else:
                load = EngineLoad(note=f"engine not answering ({reading.describe()})")
    view = _view(d, live=live)
    return d, WatchSample(
        name=d.name, at=utcnow(), status=d.status, instance_status=live, health=health, health_reason=reason,
        uptime_s=view["uptime_s"], cost_so_far=view["cost_so_far"], dph_total=d.dph_total,
        expires=view["expires"], **load.as_dict(),
    )


def _figure(value: float | None) -> str:
    return "n/a" if value is None else f"{value:g}"


def _kv(value: float | None) -> str:
    if value is None:
        return "n/a"
    return "<0.1%" if 0 < value < 0.001 else f"{value * 100:.1f}%"  # in use, however little, is not 0.0%


def line(s: WatchSample) -> str:
    """The one-line form (a pipe, a log file)."""
    from glmdeploy.durations import human_duration

    health = s.health or "-"
    if s.health_reason:
        health += f" ({s.health_reason})"
    text = (f"{s.at.strftime('%H:%M:%S')} {s.name}: {s.status}"
            + (f" ({s.instance_status})" if s.instance_status else "")
            + f"  health {health}  up {human_duration(s.uptime_s)}  ${s.cost_so_far:.2f}"
            + (f" at ${s.dph_total:.3f}/h" if s.dph_total is not None else "")
            + f"  running {_figure(s.running)}  waiting {_figure(s.waiting)}  kv {_kv(s.kv_cache_usage)}")
    if s.metrics_note:
        text += f"  [{s.metrics_note}]"
    return text


def _block(s: WatchSample) -> Any:
    from rich.markup import escape
    from rich.table import Table

    from glmdeploy.durations import human_duration

    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold")
    table.add_column()
    health = s.health or "-"
    style = {"unhealthy": "red", "unreachable": "yellow", "healthy": "green"}.get(s.health or "", "")
    table.add_row(s.name, f"{s.status}" + (f" (instance {s.instance_status})" if s.instance_status else ""))
    reason = f": {escape(s.health_reason)}" if s.health_reason else ""
    table.add_row("health", (f"[{style}]{health}[/]" if style else health) + reason)
    table.add_row("uptime", human_duration(s.uptime_s) + (f"  (expires {s.expires})" if s.expires else ""))
    table.add_row("cost", f"${s.cost_so_far:.2f}" + (f" at ${s.dph_total:.3f}/h" if s.dph_total is not None else ""))
    table.add_row("running", _figure(s.running))
    table.add_row("waiting", _figure(s.waiting))
    table.add_row("KV cache", _kv(s.kv_cache_usage))
    if s.metrics_note:
        table.add_row("note", escape(s.metrics_note))
    table.add_row("", f"[dim]refreshed {s.at.strftime('%H:%M:%S')} UTC; "
                  "Ctrl-C ends the watch (the instance keeps running)[/]")
    return table


def watch(name: str | None, *, interval: float, count: int | None, json_output: bool, api_key: str | None) -> None:
    _LOG_READERS.clear()  # a new watch (a new connection) fetches the log afresh
    import sys

    from glmdeploy.commands._common import OutputClosed
    from glmdeploy.connect import connect_for
    from glmdeploy.errors import UsageError
    from glmdeploy.state import StateStore

    with StateStore.open() as store:
        d = store.resolve(name)
        if d.is_group:
            raise UsageError(f"{d.name} is a replica group: 'status --watch' follows one deployment; "
                             "use 'status' for the group")
        conn = connect_for(d, api_key) if d.is_active else None
        live_display: Any = None
        try:
            if not json_output and sys.stdout.isatty():
                from rich.live import Live

                live_display = Live(console=console(), auto_refresh=False, transient=False)
                live_display.start()
            done = 0
            while True:
                d, s = sample(store, d, conn)
                done += 1
                if json_output:
                    emit_json(s.model_dump(mode="json"))
                elif live_display is not None:
                    live_display.update(_block(s), refresh=True)
                else:
                    print(line(s), flush=True)
                if not d.is_active or (count is not None and done >= count):
                    break  # a destroyed deployment has nothing more to show
                time.sleep(interval)
        except OutputClosed:
            raise
        except KeyboardInterrupt:
            pass  # Ctrl-C ends the watch, only the watch: exit 0, the deployment is untouched
        finally:
            if live_display is not None:
                live_display.stop()
            if conn is not None:
                conn.client.close()
