"""The engine's load, read from its Prometheus ``/metrics``: requests running and waiting, KV-cache usage.

``status --watch`` calls ``probe_load``; which metric means what is per engine (``LOAD_METRICS``), taken
from each engine's own source:

- vLLM: ``vllm:num_requests_running``, ``vllm:num_requests_waiting``, ``vllm:kv_cache_usage_perc`` (a
  fraction, 1 = full), labelled ``model_name``/``engine`` (vllm-project/vllm vllm/v1/metrics/loggers.py
  @a6f0308cfe80, ``PrometheusStatLogger.__init__``). Before ~0.11 the KV gauge was also exported as
  ``vllm:gpu_cache_usage_perc`` (deprecated there, loggers.py @005a810bc40f), read as a fallback; no
  image our profiles pin (v0.24.0, v0.27.1) is that old. Always served, without the API key (engines.md §3).
- SGLang: ``sglang:num_running_reqs``, ``sglang:num_queue_reqs``, ``sglang:token_usage`` (a fraction of
  the KV pool) (sgl-project/sglang python/sglang/srt/metrics/collector.py @93d04878cfb9,
  ``SchedulerMetricsCollector``). ``/metrics`` is mounted only with ``--enable-metrics`` (off by default,
  engines.md §2), which no shipped profile passes: ``probe_load`` then reads "n/a" with that reason, and
  ``status --watch`` reads the same figures from SGLang's scheduler log instead (``engines.sglang_log_load``,
  fetched at most every 30 s; ``EngineLoad.source`` says which).
- LightLLM: ``lightllm_batch_current_size`` (the running batch) and ``lightllm_queue_size`` (ModelTC/lightllm
  lightllm/server/metrics/metrics.py @ecabbea894a0, served by lightllm/server/metrics/manager.py
  @892a353f5fea ``generate_latest``). It exports no KV-cache usage gauge: "n/a".

A gauge sums over its label sets (vLLM labels one series per engine core; data-parallel runs have several).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import httpx

METRICS_PATH = "/metrics"
SGLANG_METRICS_FLAG = "--enable-metrics"


@dataclass(frozen=True)
class LoadMetrics:
    """Which exposition names carry the three figures; each a list of names tried in order."""

    running: tuple[str, ...]
    waiting: tuple[str, ...]
    kv_usage: tuple[str, ...]  # empty: the engine exports none
    kv_missing_reason: str = ""


LOAD_METRICS: dict[str, LoadMetrics] = {
    "vllm": LoadMetrics(
        running=("vllm:num_requests_running",),
        waiting=("vllm:num_requests_waiting",),
        kv_usage=("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"),
    ),
    "sglang": LoadMetrics(
        running=("sglang:num_running_reqs",),
        waiting=("sglang:num_queue_reqs",),
        kv_usage=("sglang:token_usage",),
    ),
    "lightllm": LoadMetrics(
        running=("lightllm_batch_current_size",),
        waiting=("lightllm_queue_size",),
        kv_usage=(),
        kv_missing_reason="LightLLM exports no KV-cache usage metric",
    ),
}


@dataclass(frozen=True)
class EngineLoad:
    """One reading; None figures are unknown, ``note`` says why."""

    running: float | None = None
    waiting: float | None = None
    kv_usage: float | None = None  # 0..1
    note: str | None = None
    source: str | None = None  # "metrics" (/metrics) or "log" (the engine's log lines); None: no reading

    def as_dict(self) -> dict[str, Any]:
        return {"running": self.running, "waiting": self.waiting, "kv_cache_usage": self.kv_usage,
                "metrics_note": self.note, "load_source": self.source}


def parse_exposition(text: str) -> dict[str, float]:
    """Prometheus text exposition (0.0.4 and 1.0.0): metric name -> the sum of its samples.

    Comments and malformed lines are skipped; label values may hold spaces, braces and escaped quotes.
    """
    totals: dict[str, float] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        brace = line.find("{")
        space = line.find(" ")
        if brace != -1 and (space == -1 or brace < space):
            name = line[:brace]
            end = _labels_end(line, brace)
            if end is None:
                continue
            rest = line[end + 1 :].split()
        else:
            name, _, after = line.partition(" ")
            rest = after.split()
        if not rest:
            continue
        try:
            value = float(rest[0])
        except ValueError:
            continue
        if math.isnan(value):
            continue
        totals[name] = totals.get(name, 0.0) + value
    return totals


def _labels_end(line: str, start: int) -> int | None:
    """Index of the ``}`` closing the label set opened at ``start`` (quotes and escapes respected)."""
    quoted = False
    i = start + 1
    while i < len(line):
        ch = line[i]
        if quoted and ch == "\\":
            i += 2
            continue
        if ch == '"':
            quoted = not quoted
        elif ch == "}" and not quoted:
            return i
        i += 1
    return None


def read_load(kind: str, text: str) -> EngineLoad:
    """The load an engine of ``kind`` reports in its ``/metrics`` body."""
    names = LOAD_METRICS[kind]
    values = parse_exposition(text)

    def first(candidates: tuple[str, ...]) -> float | None:
        return next((values[n] for n in candidates if n in values), None)

    running, waiting, kv = first(names.running), first(names.waiting), first(names.kv_usage)
    notes = []
    if running is None or waiting is None:
        notes.append(f"/metrics has no {names.running[0]}/{names.waiting[0]}")
    if kv is None:
        notes.append(names.kv_missing_reason or f"/metrics has no {names.kv_usage[0]}")
    found = running is not None or waiting is not None or kv is not None
    return EngineLoad(running, waiting, kv, "; ".join(notes) or None, source="metrics" if found else None)


def unavailable_reason(kind: str, argv: list[str]) -> str | None:
    """Why this engine, launched with ``argv``, serves no ``/metrics`` at all (None: it does)."""
    if kind == "sglang" and SGLANG_METRICS_FLAG not in argv:
        return f"SGLang serves /metrics only with {SGLANG_METRICS_FLAG} (not in this profile's launch)"
    return None


def probe_load(kind: str, argv: list[str], http: httpx.Client, root: str, api_key: str | None) -> EngineLoad:
    """GET ``root``/metrics once and read it; never raises (a failure is a reading with a note)."""
    import httpx

    if kind not in LOAD_METRICS:
        return EngineLoad(note=f"no metrics known for engine {kind!r}")
    reason = unavailable_reason(kind, argv)
    if reason is not None:
        return EngineLoad(note=reason)
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        response = http.get(root + METRICS_PATH, headers=headers)
    except httpx.HTTPError as exc:
        return EngineLoad(note=f"GET {METRICS_PATH}: {type(exc).__name__}")
    if response.status_code != 200:
        return EngineLoad(note=f"GET {METRICS_PATH}: HTTP {response.status_code}")
    return read_load(kind, response.text)


__all__ = ["LOAD_METRICS", "EngineLoad", "LoadMetrics", "parse_exposition", "probe_load", "read_load",
           "unavailable_reason"]
