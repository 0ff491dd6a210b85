"""Shipped profiles with changes, for the planner and engine-memory tests: ``from profile_variants import variant``
(tests/conftest.py puts tests/ on sys.path)."""

from __future__ import annotations

from typing import Any

from glmdeploy.profiles import Profile, load_profile


def variant(base: str, **changes: Any) -> Profile:
    """A shipped profile with dotted-key changes, validated like a user's file would be."""
    data = load_profile(base).model_dump(mode="json")
    for dotted, value in changes.items():
        node = data
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node[part]
        node[leaf] = value
    return Profile.model_validate(data)


def h100_sglang(**changes: Any) -> Profile:
    """GLM-4.7-Flash on 1x H100 with SGLang at its default mem_fraction_static and context (memory.md
    §6 #2 and #5 run it so; §5.5 works it through), plus ``changes``."""
    return variant(
        "4x3090",
        **{
            "hardware.gpu_names": ["H100 SXM"],
            "hardware.num_gpus": 1,
            "hardware.min_vram_gb": 79,
            "engine.image": "lmsysorg/sglang:v0.5.9",
            "engine.tensor_parallel": 1,
            "engine.mem_fraction": None,
            "engine.context_length": None,
            **changes,
        },
    )
