"""The simulated engines size their KV pool with the planner's engine formulas plus a seeded deviation.

Issue 11 §5: the sandbox prints a capacity derived from glmdeploy.engines' memory models for the
GPU of the rented offer, moved by up to ±4% deterministically from the seed, so `up` and `status`
can be tested on a planned-vs-reported comparison that is sometimes within 2% and sometimes not.
"""

from __future__ import annotations

import pytest

from glmdeploy.catalog import GPU_VARIANTS
from glmdeploy.engines import get_engine
from glmdeploy.onstart import render
from glmdeploy.planner import plan_profile
from glmdeploy.profiles import load_all
from glmdeploy.sandbox.engines import launch_spec_from
from glmdeploy.sandbox.engines.config import KV_DEVIATION, engine_config, kv_deviation

PROFILES = load_all()


@pytest.mark.parametrize("profile", PROFILES, ids=[p.name for p in PROFILES])
@pytest.mark.parametrize("seed", [0, 1, 7])
def test_simulated_pool_is_the_plan_moved_by_the_seeded_deviation(profile: object, seed: int) -> None:
    from glmdeploy.profiles.model import Profile

    assert isinstance(profile, Profile)
    plan = plan_profile(profile)
    spec = launch_spec_from(profile.engine.image, render(profile), {"GLM_API_KEY": "k"})
    assert spec is not None
    gpu = plan.gpu
    config = engine_config(spec, gpu_name=gpu.name, gpu_ram_mib=gpu.nvidia_smi_mib, seed=seed)
    deviation = kv_deviation(seed)
    assert abs(deviation) <= KV_DEVIATION
    context = profile.engine.context_length or 202_752
    expected = plan.kv_pool_tokens * (1 + deviation)
    # Rounding: the engine's block, and a pool never shorter than one context (see config.py).
    if expected >= context:
        assert config.kv_tokens == pytest.approx(expected, abs=plan.block_size + 1)
    else:
        assert config.kv_tokens == context
    assert config.gpu_total_gib == pytest.approx(gpu.total_gib, abs=1e-3)


def test_deviation_is_deterministic_and_spread_both_sides_of_2_percent() -> None:
    values = [kv_deviation(seed) for seed in range(200)]
    assert values == [kv_deviation(seed) for seed in range(200)]
    assert all(abs(v) <= KV_DEVIATION for v in values)
    assert any(abs(v) > 0.02 for v in values) and any(abs(v) < 0.02 for v in values)
    assert any(v > 0 for v in values) and any(v < 0 for v in values)


def test_without_a_known_gpu_the_old_smallest_fitting_card_is_used() -> None:
    profile = next(p for p in PROFILES if p.name == "2x5090-nvfp4")
    spec = launch_spec_from(profile.engine.image, render(profile), {"GLM_API_KEY": "k"})
    assert spec is not None
    assert engine_config(spec).kv_tokens == engine_config(spec, gpu_name="no such GPU").kv_tokens
    assert "RTX 5090" in GPU_VARIANTS
    assert get_engine("vllm").parse_kv_tokens("GPU KV cache size: 1,234 tokens") == 1234
