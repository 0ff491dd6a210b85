"""The sandbox's offer catalogue and the search semantics of ``POST /api/v0/bundles/``.

Offers are generated from a seed so that two sandboxes started with the same ``--seed`` list the
same machines, ids and prices. Field names, units and value shapes follow vast-api.md §4.5-4.6
(``gpu_ram`` in MB, ``compute_cap`` = CC x 100, ``driver_version`` a dotted string with its integer
twin ``driver_vers``, ``duration`` in seconds, ``geolocation`` ending in a country code).

Search follows §4.2: each filter is ``{"field": {"op": value}}`` with ops eq/neq/gt/gte/lt/lte/in/notin;
values sent as strings (the official CLI sends ``{"eq": "1"}``) are coerced to the field's type,
as the server does. ``dph_total`` is priced for ``allocated_storage`` GiB of disk.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

HOURS_PER_MONTH = 720.0
# vast-api.md §4.2: the server's own default when a search sends no allocated_storage.
DEFAULT_ALLOCATED_STORAGE = 8.0
DEFAULT_SEARCH_LIMIT = 64
SEARCH_OPS = frozenset({"eq", "neq", "gt", "gte", "lt", "lte", "in", "notin"})
SEARCH_TYPES = {"on-demand": "on-demand", "ondemand": "on-demand", "bid": "bid", "reserved": "reserved"}
# Top-level keys of a search body that are directives, not filters (vast-api.md §4.2).
DIRECTIVES = frozenset({"order", "type", "limit", "allocated_storage", "disable_bundling", "select_cols"})
# Field aliases the server understands like the client does (vast-api.md §4.4).
ALIASES = {
    "cuda_vers": "cuda_max_good",
    "display_active": "gpu_display_active",
    "dlperf_usd": "dlperf_per_dphtotal",
    "dph": "dph_total",
    "flops_usd": "flops_per_dphtotal",
}


class SearchError(ValueError):
    """A malformed search body (answered 400 ``invalid_args``)."""


@dataclass(frozen=True)
class GpuModel:
    name: str
    vram_mb: int
    compute_cap: int
    arch: str
    price_per_gpu: tuple[float, float]
    counts: tuple[int, ...]
    # cuda_max_good values for the well-kept machines and for the rest.
    good_cuda: tuple[float, ...]
    other_cuda: tuple[float, ...]
    tflops: float
    mem_bw: float
    power_w: int


GPU_MODELS: tuple[GpuModel, ...] = (
    GpuModel("RTX 3090", 24576, 860, "nvidia", (0.11, 0.30), (1, 2, 4, 8),
             (12.2, 12.4, 12.6), (11.8, 12.0, 12.8, 13.0), 35.6, 936.0, 350),
    GpuModel("RTX 4090", 24564, 890, "nvidia", (0.28, 0.48), (1, 2, 4, 8),
             (12.4, 12.8, 13.0), (12.2, 12.6, 12.9), 82.6, 1008.0, 450),
    GpuModel("RTX 4090D", 24564, 890, "nvidia", (0.22, 0.42), (1, 2, 4, 8),
             (12.8, 12.9, 13.0), (12.2, 12.4, 12.6), 73.5, 1008.0, 425),
    GpuModel("RTX 5090", 32607, 1200, "nvidia", (0.40, 0.66), (1, 2, 4),
             (12.8, 12.9, 13.0), (12.8, 13.0), 104.8, 1792.0, 575),
    GpuModel("A100 SXM4", 81920, 800, "nvidia", (0.75, 1.35), (1, 2, 4, 8),
             (12.2, 12.4, 12.8), (11.8, 12.0, 13.0), 19.5, 2039.0, 400),
    GpuModel("A100 PCIE", 40960, 800, "nvidia", (0.55, 0.95), (1, 2, 4),
             (12.2, 12.4, 12.6), (11.8, 12.8), 19.5, 1555.0, 250),
    GpuModel("H100 SXM", 81559, 900, "nvidia", (1.55, 2.60), (1, 2, 4, 8),
             (12.4, 12.8, 13.0), (12.2, 12.6), 66.9, 3352.0, 700),
    GpuModel("H100 PCIE", 81559, 900, "nvidia", (1.30, 2.10), (1, 2, 4),
             (12.4, 12.8, 13.0), (12.2,), 51.2, 2039.0, 350),
    GpuModel("H200", 143771, 900, "nvidia", (2.10, 3.40), (1, 2, 4, 8),
             (12.8, 12.9, 13.0), (12.4, 12.6), 66.9, 4800.0, 700),
    GpuModel("MI300X", 196608, 942, "amd", (1.40, 2.40), (1, 2, 4, 8),
             (0.0,), (0.0,), 163.4, 5300.0, 750),
)

LOCATIONS = (
    "California, US", "Texas, US", "Virginia, US", "Oregon, US", "Quebec, CA", "Ontario, CA",
    "France, FR", "Germany, DE", "Netherlands, NL", "Sweden, SE", "Finland, FI", "Poland, PL",
    "Czechia, CZ", "Spain, ES", "United Kingdom, GB", "Japan, JP", "Taiwan, TW", "Korea, KR",
    "Singapore, SG", "Australia, AU", "Brazil, BR", "Norway, NO",
)
DRIVERS = {
    11.8: "520.61.05", 12.0: "525.147.05", 12.2: "535.183.01", 12.4: "550.127.05", 12.6: "560.35.03",
    12.8: "570.133.07", 12.9: "575.57.08", 13.0: "580.65.06",
}
CPUS = (
    ("AMD EPYC 7713 64-Core Processor", 128), ("AMD EPYC 7B13", 64), ("Intel Xeon Gold 6342", 96),
    ("AMD Ryzen 9 7950X 16-Core Processor", 32), ("AMD EPYC 9654 96-Core Processor", 192),
    ("Intel Core i9-13900K", 32), ("AMD Threadripper PRO 5975WX 32-Cores", 64),
)
# How many machines per (GPU model, GPU count): the first ones are well kept (verified, reliable,
# fast links, direct ports), the rest are drawn from wider ranges like a real marketplace.
GOOD_PER_BUNDLE = 3
OTHER_PER_BUNDLE = 3


def driver_int(version: str) -> int:
    """``535.86.05`` -> 535086005, as the client encodes driver versions (vast-api.md §4.4)."""
    total = 0
    for part in version.split("."):
        total = total * 1000 + int(part)
    return total


def build_catalogue(seed: int, *, now: float | None = None) -> list[dict[str, Any]]:
    """All offers of a fresh sandbox, deterministic for ``seed`` (apart from ``end_date``)."""
    rng = random.Random(seed)
    now = time.time() if now is None else now
    offers: list[dict[str, Any]] = []
    next_offer = 18_000_000 + rng.randrange(1_000_000)
    next_machine = 10_000 + rng.randrange(20_000)
    for model in GPU_MODELS:
        for count in model.counts:
            bundle = []
            for index in range(GOOD_PER_BUNDLE + OTHER_PER_BUNDLE):
                good = index < GOOD_PER_BUNDLE
                next_offer += rng.randrange(3, 400)
                next_machine += rng.randrange(1, 90)
                bundle.append(_offer(rng, model, count, good, next_offer, next_machine, now))
            _share_a_host(bundle[:GOOD_PER_BUNDLE])
            offers.extend(bundle)
    return offers


def _share_a_host(good: list[dict[str, Any]]) -> None:
    """The two cheapest well-kept machines of a bundle belong to one host, as on Vast, where a host
    (a provider) often lists several machines: a replica group's host spreading meets a choice
    between a cheaper machine of a host it uses and another host's (glmdeploy.market.spread_over_hosts).
    Consumes no randomness, so every other field is what it was before hosts were shared."""
    cheapest = sorted(good, key=lambda o: o["dph_base"])[:2]
    if len(cheapest) == 2:
        cheapest[1]["host_id"] = cheapest[0]["host_id"]


def _offer(rng: random.Random, model: GpuModel, count: int, good: bool, offer_id: int,
           machine_id: int, now: float) -> dict[str, Any]:
    lo, hi = model.price_per_gpu
    per_gpu = round(rng.uniform(lo, lo + (hi - lo) * (0.7 if good else 1.0)), 4)
    dph_base = round(per_gpu * count, 6)
    cuda = rng.choice(model.good_cuda if good else model.good_cuda + model.other_cuda)
    if model.arch == "amd":
        driver = "6.10.5"
    else:
        driver = DRIVERS[cuda]
    cpu_name, cpu_threads = rng.choice(CPUS)
    reliability = round(rng.uniform(0.975, 0.9995) if good else rng.uniform(0.80, 0.999), 6)
    inet_down = round(rng.uniform(1200, 8000) if good else rng.uniform(40, 3000), 1)
    inet_up = round(inet_down * rng.uniform(0.3, 1.0), 1)
    verified = True if good else rng.random() < 0.6
    direct_ports = rng.randrange(20, 400) if good else rng.choice((0, 0, 3, 16, 64, 120))
    storage_cost = round(rng.uniform(0.05, 0.25), 4)
    disk_space = float(rng.choice((300, 500, 800, 1000, 1500, 2000, 4000)) * max(1, count // 2))
    if good:
        disk_space = max(disk_space, 1000.0)
    duration = rng.uniform(3, 180) * 86400.0
    dlperf = round(model.tflops * count * rng.uniform(0.85, 1.05), 2)
    geolocation = rng.choice(LOCATIONS)
    host_id = 100_000 + (machine_id * 7919) % 900_000
    offer: dict[str, Any] = {
        "id": offer_id,
        "ask_contract_id": offer_id,
        "bundle_id": offer_id * 3 + 1,
        "bundled_results": None,
        "machine_id": machine_id,
        "host_id": host_id,
        "cluster_id": None,
        "num_gpus": count,
        "gpu_name": model.name,
        "gpu_arch": model.arch,
        "gpu_ram": model.vram_mb,
        "gpu_total_ram": model.vram_mb * count,
        "gpu_frac": 1.0,
        "gpu_display_active": False,
        "gpu_max_power": float(model.power_w),
        "gpu_max_temp": 83.0 if model.arch == "nvidia" else 95.0,
        "gpu_mem_bw": model.mem_bw,
        "bw_nvlink": 0.0 if "RTX" in model.name else round(rng.uniform(200, 900), 1),
        "compute_cap": model.compute_cap if model.arch == "nvidia" else 0,
        "cuda_max_good": cuda,
        "driver_version": driver,
        "driver_vers": driver_int(driver),
        "cpu_name": cpu_name,
        "cpu_arch": "amd64",
        "cpu_cores": cpu_threads,
        "cpu_cores_effective": float(max(4, cpu_threads * count // 8)),
        "cpu_ghz": round(rng.uniform(2.0, 5.2), 1),
        "cpu_ram": int(rng.choice((64, 128, 256, 512, 1024, 2048)) * 1024 * max(1, count // 2)),
        "has_avx": 1,
        "mobo_name": rng.choice(("ROMED8-2T", "H12SSL-i", "X13DEI", "WRX80 Creator", "TRX50 AERO D")),
        "pci_gen": 4.0 if model.compute_cap < 1000 else 5.0,
        "pcie_bw": round(rng.uniform(11.0, 50.0), 1),
        "disk_space": disk_space,
        "disk_bw": round(rng.uniform(600, 7000), 1),
        "disk_name": rng.choice(("Samsung SSD 990 PRO 4TB", "SAMSUNG MZQL23T8HCLS", "WD_BLACK SN850X 2TB")),
        "storage_cost": storage_cost,
        "dph_base": dph_base,
        "inet_up": inet_up,
        "inet_down": inet_down,
        "inet_up_cost": round(rng.uniform(0.0, 0.02), 4),
        "inet_down_cost": round(rng.uniform(0.0, 0.02), 4),
        "direct_port_count": direct_ports,
        "reliability": reliability,
        "reliability2": reliability,
        "reliability_mult": round(min(1.0, reliability + 0.01), 6),
        "expected_reliability": reliability,
        "verification": "verified" if verified else "unverified",
        "verified": verified,
        "vericode": 0 if verified else 1,
        "geolocation": geolocation,
        "geolocode": LOCATIONS.index(geolocation) + 1,
        "duration": duration,
        "end_date": now + duration,
        "start_date": None,
        "hosting_type": 1 if good and rng.random() < 0.5 else 0,
        "static_ip": bool(good or rng.random() < 0.5),
        "public_ipaddr": "127.0.0.1",
        "hostname": None,
        "dlperf": dlperf,
        "total_flops": round(model.tflops * count, 1),
        "rentable": True,
        "rented": False,
        "is_bid": False,
        "external": not good and rng.random() < 0.1,
        "vms_enabled": False,
        "os_version": rng.choice(("22.04", "24.04")),
        "ubuntu_version": None,
        "min_bid": round(dph_base * 0.55, 6),
        "platform_fee": 0.0,
        "webpage": None,
        "logo": "/static/logos/vastai_small2.png",
    }
    offer["ubuntu_version"] = offer["os_version"]
    return offer


def priced(offer: Mapping[str, Any], allocated_storage: float, kind: str = "on-demand") -> dict[str, Any]:
    """The offer as a search returns it: totals priced for ``allocated_storage`` GiB."""
    row = dict(offer)
    storage_per_hour = offer["storage_cost"] * allocated_storage / HOURS_PER_MONTH
    dph_total = offer["dph_base"] + storage_per_hour
    row["storage_total_cost"] = round(storage_per_hour, 6)
    row["dph_total"] = round(dph_total, 6)
    row["discounted_dph_total"] = round(offer["dph_base"] * 0.7 + storage_per_hour, 6)
    row["dlperf_per_dphtotal"] = round(offer["dlperf"] / dph_total, 4) if dph_total else 0.0
    row["flops_per_dphtotal"] = round(offer["total_flops"] / dph_total, 4) if dph_total else 0.0
    row["score"] = round(offer["dlperf"] * offer["reliability"] / math.sqrt(dph_total + 0.1), 4)
    row["search"] = {"gpuCostPerHour": offer["dph_base"], "diskHour": row["storage_total_cost"],
                     "totalHour": row["dph_total"], "discountTotalHour": 0.0, "discountedTotalPerHour": dph_total}
    row["instance"] = dict(row["search"])
    row["is_bid"] = kind == "bid"
    return row


def _coerce(value: Any, like: Any) -> Any:
    """Coerce a filter value the way the server does: strings become the field's type."""
    if isinstance(value, str) and like is not None and not isinstance(like, str):
        text = value.strip()
        if isinstance(like, bool):
            if text.lower() in ("true", "1"):
                return True
            if text.lower() in ("false", "0"):
                return False
            raise SearchError(f"cannot compare {like!r} with {value!r}")
        try:
            return float(text)
        except ValueError:
            raise SearchError(f"{value!r} is not a number") from None
    return value


def _field_value(row: Mapping[str, Any], field: str, value: Any) -> Any:
    # The client sends driver_version as an int (535086005); compare it with the int twin.
    if field == "driver_version" and not isinstance(value, str):
        return row.get("driver_vers")
    if field == "geolocation":
        # Filters use 2-letter country codes; rows hold "Region, CC".
        geo = row.get("geolocation") or ""
        return geo.rsplit(",", 1)[-1].strip()
    return row.get(field)


def matches(row: Mapping[str, Any], field: str, op: str, value: Any) -> bool:
    sample = value[0] if isinstance(value, list) and value else value
    actual = _field_value(row, field, sample)
    if op in ("in", "notin"):
        if not isinstance(value, list):
            raise SearchError(f"'{op}' on {field} needs a list")
        candidates = [_coerce(v, actual) for v in value]
        found = actual in candidates
        return found if op == "in" else not found
    target = _coerce(value, actual)
    if op == "eq":
        return bool(actual == target)
    if op == "neq":
        return bool(actual != target)
    if actual is None or target is None:
        return False
    try:
        if op == "gt":
            return bool(actual > target)
        if op == "gte":
            return bool(actual >= target)
        if op == "lt":
            return bool(actual < target)
        return bool(actual <= target)
    except TypeError:
        raise SearchError(f"cannot compare {field} with {value!r}") from None


def _number(value: Any, what: str) -> float:
    try:
        result = float(value)
    except (TypeError, ValueError):
        raise SearchError(f"{what} must be a number") from None
    if math.isnan(result) or math.isinf(result):
        raise SearchError(f"{what} must be finite")
    return result


def search(offers: Iterable[Mapping[str, Any]], query: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Apply a search body to the offers: filter, price, order, limit."""
    if not isinstance(query, Mapping):
        raise SearchError("the search query must be a JSON object")
    kind = query.get("type", "on-demand")
    if kind not in SEARCH_TYPES:
        raise SearchError(f"unknown type {kind!r}; expected one of on-demand, bid, reserved")
    kind = SEARCH_TYPES[kind]
    storage = _number(query.get("allocated_storage", DEFAULT_ALLOCATED_STORAGE), "allocated_storage")
    if storage < 0:
        raise SearchError("allocated_storage must not be negative")
    limit_raw = query.get("limit", DEFAULT_SEARCH_LIMIT)
    limit = int(_number(limit_raw, "limit")) if limit_raw is not None else DEFAULT_SEARCH_LIMIT
    filters: list[tuple[str, str, Any]] = []
    for raw_field, condition in query.items():
        if raw_field in DIRECTIVES:
            continue
        field = ALIASES.get(raw_field, raw_field)
        if not isinstance(condition, Mapping):
            raise SearchError(f"filter for {raw_field} must be an object like {{\"eq\": value}}")
        for op, value in condition.items():
            if op not in SEARCH_OPS:
                raise SearchError(f"unknown operator {op!r} for {raw_field}")
            filters.append((field, op, value))
    rows = [priced(offer, storage, kind) for offer in offers]
    rows = [row for row in rows if all(matches(row, f, op, v) for f, op, v in filters)]
    order = query.get("order", [["score", "desc"]])
    if not isinstance(order, list):
        raise SearchError("order must be a list of [field, direction] pairs")
    for entry in reversed(order):
        if not (isinstance(entry, list | tuple) and len(entry) in (1, 2) and isinstance(entry[0], str)):
            raise SearchError("order must be a list of [field, direction] pairs")
        field = ALIASES.get(entry[0], entry[0])
        direction = entry[1] if len(entry) == 2 else "asc"
        if direction not in ("asc", "desc"):
            raise SearchError(f"order direction must be asc or desc, not {direction!r}")
        present = [r for r in rows if r.get(field) is not None]
        missing = [r for r in rows if r.get(field) is None]
        present.sort(key=lambda r, f=field: r[f], reverse=direction == "desc")  # type: ignore[misc]
        rows = present + missing
    if limit > 0:
        rows = rows[:limit]
    return rows
