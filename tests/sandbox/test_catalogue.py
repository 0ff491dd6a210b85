"""The seeded catalogue: realistic, deterministic, and every shipped profile finds offers."""

from __future__ import annotations

from typing import Any

import pytest

from glmdeploy.profiles import load_all
from glmdeploy.sandbox.catalogue import build_catalogue, search
from glmdeploy.vast.filters import offer_query

PROFILE_NAMES = sorted(p.name for p in load_all())


@pytest.mark.parametrize("seed", [0, 1, 42, 2026])
@pytest.mark.parametrize("name", PROFILE_NAMES)
def test_every_profile_finds_two_machines(name: str, seed: int) -> None:
    profile = next(p for p in load_all() if p.name == name)
    offers = search(build_catalogue(seed), offer_query(profile.hardware))
    assert len({o["machine_id"] for o in offers}) >= 2
    for offer in offers:
        assert offer["gpu_name"] in profile.hardware.gpu_names
        assert offer["num_gpus"] == profile.hardware.num_gpus
        assert offer["dph_total"] <= profile.hardware.max_price


def test_profiles_over_the_sandbox_api(vast: Any) -> None:
    for profile in load_all():
        offers = vast.search(offer_query(profile.hardware))
        assert len({o["machine_id"] for o in offers}) >= 2, profile.name


def test_same_seed_same_catalogue_other_seed_differs() -> None:
    def key(seed: int) -> list[tuple[Any, ...]]:
        return [(o["id"], o["machine_id"], o["dph_base"], o["gpu_name"]) for o in build_catalogue(seed, now=0)]

    assert key(5) == key(5)
    assert key(5) != key(6)


def test_catalogue_has_the_market_variety_tests_need() -> None:
    offers = build_catalogue(0)
    names = {o["gpu_name"] for o in offers}
    assert {"RTX 3090", "RTX 4090", "RTX 4090D", "RTX 5090", "A100 SXM4", "A100 PCIE", "H100 SXM", "H100 PCIE",
            "H200", "MI300X"} <= names
    assert {o["num_gpus"] for o in offers} == {1, 2, 4, 8}
    assert {24576, 32607, 81559, 143771} <= {o["gpu_ram"] for o in offers}
    assert any(o["direct_port_count"] == 0 for o in offers)
    assert {"verified", "unverified"} == {o["verification"] for o in offers}
    cuda_3090 = {o["cuda_max_good"] for o in offers if o["gpu_name"] == "RTX 3090"}
    assert any(12.2 <= c <= 12.6 for c in cuda_3090) and any(c >= 12.8 for c in cuda_3090)
    assert len({o["id"] for o in offers}) == len(offers) == len({o["machine_id"] for o in offers})
    for offer in offers:
        assert offer["geolocation"][-4:-2] == ", " and offer["duration"] > 0
        assert offer["gpu_total_ram"] == offer["gpu_ram"] * offer["num_gpus"]
        assert 0 < offer["reliability"] <= 1 and offer["inet_down"] > 0


def test_cli_style_driver_version_and_day_units() -> None:
    offers = build_catalogue(0)
    # vastai sends driver_version as an int (535.86.05 -> 535086005) and duration in seconds.
    newer = search(offers, {"driver_version": {"gte": 570000000}, "limit": 1000})
    assert newer and all(int(o["driver_version"].split(".")[0]) >= 570 for o in newer)
    long_lived = search(offers, {"duration": {"gt": 30 * 86400.0}, "limit": 1000})
    assert long_lived and all(o["duration"] > 30 * 86400 for o in long_lived)
