"""Fault injection for the sandbox: the spec language and the bookkeeping of what fires when.

Spec (documented with examples in docs/sandbox.md)::

    SPEC  := ENTRY (";" ENTRY)*
    ENTRY := NAME [":" ENDPOINT] ["=" VALUE] ("," KEY "=" VALUE)*

``VALUE`` is a count for Vast-level faults (how many times it fires; omitted = every time) and the
engine's own value for engine faults (e.g. ``slow_first_token=3``). ``p=0.3`` makes a fault fire
with that probability, drawn from the sandbox's seeded generator, so a run is reproducible.
"""

from __future__ import annotations

import importlib
import random
from collections.abc import Mapping
from dataclasses import dataclass, field

# Endpoint names a request fault can target; "any" matches every Vast endpoint.
ENDPOINTS = frozenset({"search", "create", "show", "list", "logs", "destroy", "manage", "any"})
# Faults on HTTP requests; they need an endpoint.
REQUEST_FAULTS = frozenset({"http429", "http5xx", "drop"})
# Faults on create requests.
CREATE_FAULTS = frozenset({"offer_taken", "unavailable", "create_fail", "create_timeout"})
# Faults on the next created instances.
INSTANCE_FAULTS = frozenset({
    "stuck_loading", "exited", "ports_null", "loading_error", "status_null", "status_unknown", "status_offline",
})
# Faults on log retrieval (counted per instance).
LOG_FAULTS = frozenset({"empty_logs", "logs_pending"})

PARAMS: dict[str, frozenset[str]] = {
    "http429": frozenset({"retry_after", "body", "p"}),
    "http5xx": frozenset({"status", "p"}),
    "drop": frozenset({"p"}),
    "offer_taken": frozenset({"p"}),
    "unavailable": frozenset({"p"}),
    "create_fail": frozenset({"p"}),
    "create_timeout": frozenset({"delay", "p"}),
    "stuck_loading": frozenset({"p", "skip"}),
    "exited": frozenset({"msg", "p", "skip"}),
    "ports_null": frozenset({"p", "skip"}),
    "loading_error": frozenset({"msg", "p", "skip"}),
    "status_null": frozenset({"p", "skip"}),
    "status_unknown": frozenset({"p", "skip"}),
    "status_offline": frozenset({"p", "skip"}),
    "empty_logs": frozenset(),
    "logs_pending": frozenset(),
}

DEFAULT_PULL_ERROR = (
    "Error response from daemon: manifest for {image} not found: manifest unknown: manifest unknown"
)
# What `exited` reports by default: a container that would not start on this host. The text is the
# daemon failure of Vast's own self-test suite (vast-ai/vast-cli tests/cli/test_runtime_diagnostics.py
# @55679830a2c2); a pull error is `loading_error` (the instance stays loading, as on Vast).
DEFAULT_EXIT_ERROR = "Error: container failed to start: OCI runtime create failed"


class FaultSpecError(ValueError):
    """A fault spec that cannot be parsed; the message names the offending entry."""


def engine_fault_names() -> frozenset[str]:
    """The engine-level fault names, from the engines package when it is installed."""
    try:
        names = importlib.import_module("glmdeploy.sandbox.engines").ENGINE_FAULTS
    except (ImportError, AttributeError):
        return frozenset({
            "engine_oom", "never_ready", "health_flap", "slow_first_token", "broken_tool_parser",
            "reasoning_leak", "no_done", "no_auth", "models_before_health", "engine_death", "engine_exit",
            "argparse_error", "no_module", "command_not_found", "hf_gated", "hf_missing", "disk_full",
            "nccl_error", "no_kernel_image", "kv_does_not_fit", "slow_download",
        })
    return frozenset(names)


@dataclass
class Fault:
    name: str
    endpoint: str | None = None
    value: str | None = None
    remaining: int | None = None  # None = unlimited
    params: dict[str, str] = field(default_factory=dict)
    # Occasions let through so far under ``skip=N`` (an instance fault spares the first N instances).
    skipped: int = 0

    def describe(self) -> dict[str, object]:
        return {"name": self.name, "endpoint": self.endpoint, "value": self.value,
                "remaining": self.remaining, "params": dict(self.params)}


def parse(spec: str | None) -> list[Fault]:
    """Parse a fault spec; raises ``FaultSpecError`` with the offending entry."""
    faults: list[Fault] = []
    engine_names = engine_fault_names()
    for raw in (spec or "").split(";"):
        entry = raw.strip()
        if not entry:
            continue
        head, *rest = entry.split(",")
        head = head.strip()
        value: str | None = None
        if "=" in head:
            head, value = (part.strip() for part in head.split("=", 1))
        name, _, endpoint_text = head.partition(":")
        name = name.strip()
        endpoint = endpoint_text.strip() or None
        params: dict[str, str] = {}
        for item in rest:
            key, sep, param = item.partition("=")
            if not sep or not key.strip():
                raise FaultSpecError(f"fault {entry!r}: parameter {item!r} is not KEY=VALUE")
            params[key.strip()] = param.strip()
        if name in engine_names:
            if endpoint is not None or params:
                raise FaultSpecError(f"engine fault {name!r} takes only an optional =VALUE")
            faults.append(Fault(name=name, value=value))
            continue
        if name not in PARAMS:
            known = sorted(set(PARAMS) | engine_names)
            raise FaultSpecError(f"unknown fault {name!r}; known: {', '.join(known)}")
        if name in REQUEST_FAULTS:
            if endpoint not in ENDPOINTS:
                raise FaultSpecError(
                    f"fault {entry!r} needs an endpoint, one of: {', '.join(sorted(ENDPOINTS))}")
        elif endpoint is not None:
            raise FaultSpecError(f"fault {name!r} takes no endpoint")
        unknown = set(params) - PARAMS[name]
        if unknown:
            raise FaultSpecError(f"fault {name!r}: unknown parameter(s) {', '.join(sorted(unknown))}")
        remaining: int | None = None
        if value is not None:
            try:
                remaining = int(value)
            except ValueError:
                raise FaultSpecError(f"fault {entry!r}: count {value!r} is not an integer") from None
            if remaining < 0:
                raise FaultSpecError(f"fault {entry!r}: count must not be negative")
        elif name in LOG_FAULTS:
            raise FaultSpecError(f"fault {name!r} needs a count, e.g. {name}=2")
        _check_params(name, params, entry)
        faults.append(Fault(name=name, endpoint=endpoint, value=value, remaining=remaining, params=params))
    return faults


def _check_params(name: str, params: Mapping[str, str], entry: str) -> None:
    for key in ("retry_after", "delay", "p"):
        if key in params:
            try:
                number = float(params[key])
            except ValueError:
                raise FaultSpecError(f"fault {entry!r}: {key} must be a number") from None
            if number < 0 or (key == "p" and number > 1):
                raise FaultSpecError(f"fault {entry!r}: {key} out of range")
    if "skip" in params and not params["skip"].isdigit():
        raise FaultSpecError(f"fault {entry!r}: skip must be a whole number of instances")
    if params.get("body", "json") not in ("json", "detail", "text"):
        raise FaultSpecError(f"fault {entry!r}: body must be json, detail or text")
    if "status" in params:
        if params["status"] not in ("500", "502", "503", "504"):
            raise FaultSpecError(f"fault {entry!r}: status must be 500, 502, 503 or 504")


class FaultBook:
    """The live set of faults; every decision to fire goes through ``take``."""

    def __init__(self, spec: str | None = None, *, seed: int = 0) -> None:
        self._rng = random.Random(f"faults:{seed}")
        self.faults: list[Fault] = parse(spec)
        self.spec = spec or ""

    def replace(self, spec: str | None) -> None:
        self.faults = parse(spec)
        self.spec = spec or ""

    def add(self, spec: str) -> None:
        self.faults.extend(parse(spec))
        self.spec = ";".join(part for part in (self.spec, spec) if part)

    def describe(self) -> list[dict[str, object]]:
        return [fault.describe() for fault in self.faults]

    def take(self, name: str, endpoint: str | None = None) -> Fault | None:
        """The first active fault ``name`` for ``endpoint`` that fires now (its count is consumed)."""
        for fault in self.faults:
            if fault.name != name:
                continue
            if endpoint is not None and fault.endpoint not in (endpoint, "any"):
                continue
            if fault.remaining is not None and fault.remaining <= 0:
                continue
            if fault.skipped < int(fault.params.get("skip", "0")):
                fault.skipped += 1
                continue
            if "p" in fault.params and self._rng.random() >= float(fault.params["p"]):
                continue
            if fault.remaining is not None:
                fault.remaining -= 1
            return fault
        return None

    def count(self, name: str) -> int | None:
        """Per-instance budget of a log fault (0 when it is not set)."""
        for fault in self.faults:
            if fault.name == name:
                return fault.remaining
        return 0

    def engine_faults(self) -> dict[str, str | None]:
        names = engine_fault_names()
        return {fault.name: fault.value for fault in self.faults if fault.name in names}
