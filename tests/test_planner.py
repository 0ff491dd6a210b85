"""The memory planner against the public reports and worked examples in shared/reference/memory.md.

Every number asserted here is a range taken from memory.md (§5.5 worked examples, §6 validation
table) or an exact figure the reference derives (KV bytes per token, weights per rank), never a
value copied back from the planner's own output.
"""

from __future__ import annotations

from typing import Any

import pytest

from glmdeploy.catalog import MODEL_ARCHS
from glmdeploy.errors import UsageError
from glmdeploy.planner import (
    parse_image_tag,
    plan_profile,
    sglang_default_mem_fraction,
    weights_per_rank_gib,
)
from glmdeploy.profiles import Profile, load_all, load_profile
from profile_variants import h100_sglang, variant

FLASH_MAX = 202_752



def h100_sglang_mtp() -> Profile:
    """memory.md §6 #2 / §5.5: GLM-4.7-Flash BF16 on 1x H100, SGLang, MTP, default mem_fraction_static."""
    return h100_sglang(**{"engine.speculative": {"method": "mtp", "num_tokens": 3}})


def two_5090(base: str, **changes: Any) -> Profile:
    return variant(base, **{"engine.mem_fraction": 0.95, **changes})


# --- memory.md §6 / §5.5, row by row -------------------------------------------------------


def test_row1_h200_lightllm_pool_is_many_times_the_full_context() -> None:
    # §6 #1: recommended launch at 202,752; §5.5 predicts a pool >= 6x that at mem_fraction 0.9.
    # The shipped profile leaves mem_fraction to LightLLM's default (0.8), which still holds > 4x.
    plan = plan_profile(load_profile("h200"))
    assert plan.attention == "mla"
    assert plan.kv_bytes_per_token == 54_144
    assert plan.kv_pool_tokens > 4 * FLASH_MAX
    assert plan.max_context_tokens == FLASH_MAX
    assert plan.verdict == "fits"
    assert plan.max_concurrent_sequences >= 4


def test_worked_example_h200_lightllm_at_mem_fraction_09() -> None:
    # §5.5: T 140.0, W 55.8, C' 1.0 -> ~69 GiB -> ~1.37 M tokens MLA, ~77k if MHA.
    profile = variant("h200", **{"engine.mem_fraction": 0.9})
    mla = plan_profile(profile)
    assert 66 <= mla.per_gpu.kv_pool_gib <= 72
    assert 1_250_000 <= mla.kv_pool_tokens <= 1_450_000
    mha = plan_profile(profile, attention="mha")
    assert 70_000 <= mha.kv_pool_tokens <= 85_000


def test_row7_4x3090_sglang_default_fraction_holds_about_91k_tokens() -> None:
    # §5.5: default mfs 0.827, T 23.6, W 14.1, C' 0.8 -> ~4.6 GiB -> ~91k MLA, ~20k MHA.
    profile = variant("4x3090", **{"engine.mem_fraction": None})
    mla = plan_profile(profile)
    assert mla.per_gpu.memory_fraction == pytest.approx(0.827, abs=0.002)
    assert 4.3 <= mla.per_gpu.kv_pool_gib <= 4.9
    assert 82_000 <= mla.kv_pool_tokens <= 100_000
    assert mla.verdict == "fits"  # the guide's 8,192 is far below the pool
    mha = plan_profile(profile, attention="mha")
    assert mha.kv_bytes_per_token == 240_640
    assert 17_000 <= mha.kv_pool_tokens <= 23_000


def test_row9_2x5090_bf16_leaves_little_room() -> None:
    # §6 #9 / §5.5: util 0.95, W 28.0 per rank. memory.md assumed A+N = 1.0 GiB (~16k MLA bf16 tokens);
    # vLLM's own terms for max_num_seqs 1 in eager mode (activations at 2,048 batched tokens, a
    # one-row sampler warm-up, non-torch and NCCL buffers) come to ~0.56 GiB, so the pool is larger
    # (~25k), with a band that still reaches down to ~10k.
    profile = two_5090("2x5090", **{"engine.kv_cache_dtype": None})
    plan = plan_profile(profile)
    assert plan.kv_bytes_per_token == 54_144
    assert 10_000 <= plan.kv_pool_tokens <= 30_000
    assert plan.uncertainty.kv_pool_tokens_low <= 16_000 <= plan.uncertainty.kv_pool_tokens_high
    assert plan.verdict == "fits"
    mha = plan_profile(profile, attention="mha")
    assert 1_000 <= mha.kv_pool_tokens <= 3_500
    assert mha.fits is False  # the seed's ~8,000 tokens only fit with the MLA latent or fp8 KV
    mha_fp8 = plan_profile(two_5090("2x5090"), attention="mha")
    assert 2_500 <= mha_fp8.kv_pool_tokens <= 7_000


def test_row10_nvfp4_2x5090_matches_82k_in_the_mha_era_and_caps_with_mla() -> None:
    # §6 #10: seed max context 82,000 (MHA era, fp8 KV); §5.5: MHA fp8 TP2 ~82.5k, MLA fp8 ~730k.
    profile = two_5090("2x5090-nvfp4")
    mha = plan_profile(profile, attention="mha")
    assert mha.kv_bytes_per_token == 120_320 * 2  # 481,280 / TP2 per memory.md §2.2
    assert 75_000 <= mha.kv_pool_tokens <= 92_000
    mla = plan_profile(profile)
    assert mla.kv_bytes_per_token == 27_072
    assert 600_000 <= mla.kv_pool_tokens <= 850_000
    assert mla.max_context_tokens == FLASH_MAX


def test_row14_bf16_on_2x4090_does_not_fit() -> None:
    # §6 #14 / §5.5: T 23.5 x 0.9 < 28.0 GiB of BF16 weights per rank.
    profile = variant(
        "4x4090d",
        **{
            "hardware.gpu_names": ["RTX 4090"],
            "hardware.num_gpus": 2,
            "engine.tensor_parallel": 2,
            "engine.mem_fraction": 0.9,
            "engine.image": "vllm/vllm-openai:v0.15.0",
        },
    )
    plan = plan_profile(profile)
    assert plan.fits is False
    assert plan.verdict == "does not fit"
    assert plan.kv_pool_tokens == 0
    assert plan.max_concurrent_sequences == 0
    assert "weights" in plan.reason


def test_row2_h100_sglang_bf16_with_mtp_holds_100_to_120k() -> None:
    # §6 #2 / §5.5: mfs 0.81, T 79.2, W 55.8 + 1.2-2.4 draft, C' 0.8 -> ~5-6 GiB -> ~100-120k; ~6k MHA.
    profile = h100_sglang_mtp()
    plan = plan_profile(profile)
    assert plan.per_gpu.memory_fraction == pytest.approx(0.811, abs=0.002)
    assert plan.kv_bytes_per_token == 55_296  # +1 MTP layer
    # memory.md §1.2: +1.2 GiB (the MTP layer alone; the engines share the target's embeddings and head).
    assert 1.15 <= plan.per_gpu.draft_weights_gib <= 2.5
    # memory.md derived ~100-120k with KV = mfs x T - W - C'; current SGLang multiplies the
    # pre-load free memory instead (KV = mfs x (T - C') - W), ~0.15 GiB more.
    assert 90_000 <= plan.kv_pool_tokens <= 130_000
    assert plan.uncertainty.kv_pool_tokens_low <= 120_000
    assert plan.verdict == "fits"  # SGLang caps the context at the pool
    mha = plan_profile(profile, attention="mha")
    assert 4_000 <= mha.kv_pool_tokens <= 8_000


def test_row8_fp8_flash_on_2x3090_with_vllm_015_fits() -> None:
    # §6 #8: marksverdhei FP8 on 2x RTX 3090 with vLLM's MLA detection: "runs with 14.7 GB VRAM".
    profile = variant(
        "4x3090",
        **{
            "model.quant": "fp8",
            "model.weights_gb": 32.0,
            "hardware.num_gpus": 2,
            "engine.kind": "vllm",
            "engine.image": "vllm/vllm-openai:v0.15.0",
            "engine.tensor_parallel": 2,
            "engine.mem_fraction": None,
            "engine.dtype": None,
            "engine.context_length": 32_768,
        },
    )
    plan = plan_profile(profile)
    assert 13.5 <= plan.per_gpu.weights_gib <= 15.5
    assert plan.attention == "mla"
    assert plan.verdict == "fits"


def test_row12_4bit_on_one_32gb_card_serves_128k_with_mla() -> None:
    # §6 #12: 4-bit on one 32 GB consumer GPU, vLLM with MLA -> 128k context.
    profile = variant(
        "2x5090-nvfp4",
        **{
            "model.quant": "awq",
            "model.weights_gb": 18.4,
            "hardware.num_gpus": 1,
            "engine.tensor_parallel": 1,
            "engine.context_length": 131_072,
            "engine.kv_cache_dtype": None,
        },
    )
    plan = plan_profile(profile)
    assert plan.fits is True
    assert plan.kv_pool_tokens >= 131_072
    # ... but not in the MHA era: 131k x 962,560 B is ~117 GiB.
    assert plan_profile(profile, attention="mha").fits is False


def test_row13_fp8_on_one_rtx_pro_6000_serves_131k() -> None:
    profile = variant(
        "2x5090-nvfp4",
        **{
            "model.quant": "fp8",
            "model.weights_gb": 32.0,
            "hardware.gpu_names": ["RTX PRO 6000 WS"],
            "hardware.num_gpus": 1,
            "hardware.min_vram_gb": 95,
            "engine.tensor_parallel": 1,
            "engine.context_length": 131_072,
            "engine.kv_cache_dtype": None,
        },
    )
    plan = plan_profile(profile)
    assert plan.verdict == "fits"
    assert plan.max_context_tokens == FLASH_MAX


def test_row23_glm45_air_fp8_on_4xh100_sglang_with_mtp() -> None:
    # §6 #23: official command, --tp-size 4 --mem-fraction-static 0.7 + EAGLE.
    profile = variant(
        "4x3090",
        **{
            "model.repo": "zai-org/GLM-4.5-Air-FP8",
            "model.arch": "glm-4.5-air",
            "model.quant": "fp8",
            "model.weights_gb": 113,
            "hardware.gpu_names": ["H100 SXM"],
            "hardware.min_vram_gb": 79,
            "engine.image": "lmsysorg/sglang:v0.5.9",
            "engine.mem_fraction": 0.7,
            "engine.context_length": 131_072,
            "engine.dtype": None,
            "engine.speculative": {"method": "mtp", "num_tokens": 3},
        },
    )
    plan = plan_profile(profile)
    assert plan.attention == "mha"  # GQA: per-head K/V
    # §3: 2 x (46 + 1 MTP) layers x (8 / 4) heads x 128 x 2 B.
    assert plan.kv_bytes_per_token == 2 * 47 * 2 * 128 * 2
    assert plan.kv_bytes_per_token_total == 2 * 47 * 8 * 128 * 2
    assert plan.verdict == "fits"


def test_full_glm47_fp8_does_not_fit_two_h100() -> None:
    # §3: ~360 GB of FP8 weights; the official minimum for GLM-4.5 FP8 is 8x H100.
    profile = variant(
        "4xh200-glm47-fp8-mtp",
        **{"hardware.gpu_names": ["H100 SXM"], "hardware.num_gpus": 2, "hardware.min_vram_gb": 79},
        **{"engine.tensor_parallel": 2},
    )
    plan = plan_profile(profile)
    assert plan.verdict == "does not fit"
    assert plan.per_gpu.weights_gib > 80


def test_shipped_4xh200_glm47_fp8_mtp_fits_full_context() -> None:
    plan = plan_profile(load_profile("4xh200-glm47-fp8-mtp"))
    # §3: GQA per rank at TP4 = 2 x 93 layers (92 + MTP) x 2 KV heads x 128 x 2 B.
    assert plan.kv_bytes_per_token == 2 * 93 * 2 * 128 * 2
    assert plan.verdict == "fits"
    assert plan.max_context_tokens == FLASH_MAX


# --- KV bytes per token and attention detection -------------------------------------------


@pytest.mark.parametrize(
    ("kind", "image", "expected"),
    [
        ("vllm", "vllm/vllm-openai:v0.14.1", "mha"),
        ("vllm", "vllm/vllm-openai:v0.15.0", "mla"),
        ("vllm", "vllm/vllm-openai-rocm:v0.15.1", "mla"),
        ("vllm", "vllm/vllm-openai:nightly-20260120", "mha"),
        ("vllm", "vllm/vllm-openai:latest", "mla"),
        ("sglang", "lmsysorg/sglang:v0.5.7", "mha"),
        ("sglang", "lmsysorg/sglang:v0.5.8", "mla"),
        ("sglang", "lmsysorg/sglang:v0.5.9-cu129", "mla"),
        ("sglang", "lmsysorg/sglang:dev-pr-17247", "mla"),
        ("sglang", "lmsysorg/sglang:nightly-dev-20260122", "mla"),
        ("sglang", "lmsysorg/sglang:nightly-dev-20260110", "mha"),
        ("lightllm", "ghcr.io/modeltc/lightllm:v1.2.0", "mla"),
        ("lightllm", "ghcr.io/modeltc/lightllm:main", "mla"),
    ],
)
def test_attention_follows_engine_and_image_tag(kind: str, image: str, expected: str) -> None:
    base = {"vllm": "2x5090-nvfp4", "sglang": "4x3090", "lightllm": "h200"}[kind]
    plan = plan_profile(load_profile(base), image=image)
    assert plan.attention == expected
    assert plan.image == image


def test_mha_fallback_bytes_per_token_for_flash() -> None:
    # memory.md §2.2: 962,560 B/token bf16 at TP1, 481,280 per rank at TP2, 240,640 at TP4.
    for base, tp in (("h200", 1), ("2x5090-nvfp4", 2), ("4x3090", 4)):
        profile = variant(base, **{"engine.kv_cache_dtype": None})
        plan = plan_profile(profile, attention="mha")
        assert plan.kv_bytes_per_token_total == 962_560
        assert plan.kv_bytes_per_token == 962_560 // tp


def test_profile_mla_switch_and_vllm_mla_disable() -> None:
    assert plan_profile(variant("h200", **{"engine.mla": False})).attention == "mha"
    assert (
        plan_profile(variant("4x3090", **{"engine.image": "lmsysorg/sglang:v0.5.7", "engine.mla": True})).attention
        == "mla"
    )
    # --attention beats the profile.
    assert plan_profile(variant("h200", **{"engine.mla": False}), attention="mla").attention == "mla"
    plan = plan_profile(variant("2x5090-nvfp4", env={"VLLM_MLA_DISABLE": "1"}))
    assert plan.attention == "mha"


def test_pre_mla_releases_warn_that_they_lack_the_model() -> None:
    plan = plan_profile(load_profile("4x3090"), image="lmsysorg/sglang:v0.5.7")
    assert any("before 0.5.8" in w for w in plan.warnings)
    plan = plan_profile(load_profile("2x5090-nvfp4"), image="vllm/vllm-openai:v0.14.1")
    assert any("before 0.15" in w for w in plan.warnings)


def test_image_of_another_engine_is_flagged() -> None:
    plan = plan_profile(load_profile("2x5090-nvfp4"), image="lmsysorg/sglang:v0.5.9")
    assert any("looks like a sglang image" in w for w in plan.warnings)
    assert not any("looks like" in w for w in plan_profile(load_profile("2x5090-nvfp4")).warnings)


def test_unrecognised_tag_assumes_mla_and_says_so() -> None:
    plan = plan_profile(load_profile("2x5090-nvfp4"), image="vllm/vllm-openai:glm5")
    assert plan.attention == "mla"
    assert any("cannot tell" in w and "--attention mha" in w for w in plan.warnings)


def test_gqa_model_cannot_be_forced_to_mla() -> None:
    with pytest.raises(UsageError, match="no MLA latent"):
        plan_profile(load_profile("4xh200-glm47-fp8-mtp"), attention="mla")


def test_gqa_heads_replicate_beyond_eight_ranks() -> None:
    # memory.md §3: with 8 KV heads, TP > 8 keeps one head per rank (max(1, kv_heads // tp)).
    profile = variant(
        "4xh200-glm47-fp8-mtp", **{"hardware.num_gpus": 16, "engine.tensor_parallel": 16, "engine.speculative": None}
    )
    assert plan_profile(profile).kv_bytes_per_token == 2 * 92 * 1 * 128 * 2


def test_fp8_kv_is_half_the_mla_latent_and_mtp_adds_a_layer() -> None:
    fp8 = plan_profile(load_profile("2x5090-nvfp4"))
    assert (fp8.kv_cache_dtype, fp8.kv_bytes_per_token) == ("fp8", 27_072)
    mtp = plan_profile(load_profile("h200-mtp"))
    assert mtp.kv_bytes_per_token == 48 * 576 * 2


def test_vllm_fp8_kv_for_mla_on_ampere_warns_and_plans_bf16() -> None:
    profile = variant(
        "4x4090d",
        **{"hardware.gpu_names": ["RTX 3090"], "engine.kv_cache_dtype": "fp8"},
    )
    plan = plan_profile(profile)
    assert plan.kv_bytes_per_token == 54_144
    assert any("compute capability 8.9" in w for w in plan.warnings)
    # Ada (8.9) accepts it.
    assert plan_profile(variant("4x4090d", **{"engine.kv_cache_dtype": "fp8"})).kv_bytes_per_token == 27_072


def test_lightllm_ignores_kv_dtype_for_mla() -> None:
    plan = plan_profile(variant("h200", **{"engine.kv_cache_dtype": "fp8"}))
    assert plan.kv_bytes_per_token == 54_144
    assert any("LightLLM" in w and "kv_cache_dtype" in w for w in plan.warnings)


# --- weights, fractions, GPUs ---------------------------------------------------------------


@pytest.mark.parametrize(("tp", "expected_gib"), [(1, 55.8), (2, 28.0), (4, 14.1)])
def test_bf16_flash_weights_per_rank_match_memory_md(tp: int, expected_gib: float) -> None:
    main, draft = weights_per_rank_gib(MODEL_ARCHS["glm-4.7-flash"], 62.4, tp, speculative=False)
    assert main == pytest.approx(expected_gib, abs=0.1)
    assert draft == 0.0
    _, with_draft = weights_per_rank_gib(MODEL_ARCHS["glm-4.7-flash"], 62.4, tp, speculative=True)
    assert 1.1 / tp <= with_draft <= 2.5 / tp + 0.05  # memory.md §1.2: +1.2-2.4 GiB at TP1, ÷TP


@pytest.mark.parametrize(
    ("mib", "tp", "spec", "expected"),
    [
        (24576, 1, False, 0.847),
        (24576, 4, False, 0.827),
        (24576, 4, True, 0.743),
        (32607, 2, False, 0.881),
        (46068, 1, False, 0.851),
        (40960, 1, False, 0.833),
        (81559, 1, False, 0.836),
        (81559, 1, True, 0.811),
        (97887, 4, False, 0.854),
        (143771, 1, False, 0.907),
        (183359, 1, False, 0.857),
    ],
)
def test_sglang_default_fraction_reproduces_memory_md_table(mib: int, tp: int, spec: bool, expected: float) -> None:
    assert sglang_default_mem_fraction(mib, tp, speculative=spec) == pytest.approx(expected, abs=0.002)


def test_vllm_default_utilization_depends_on_version() -> None:
    def util(image: str) -> float:
        return plan_profile(variant("2x5090-nvfp4", **{"engine.image": image})).per_gpu.memory_fraction

    assert util("vllm/vllm-openai:v0.24.0") == 0.9
    assert util("vllm/vllm-openai:v0.33.0") == 0.92


def test_lightllm_default_fraction_is_08() -> None:
    plan = plan_profile(load_profile("h200"))
    assert plan.per_gpu.memory_fraction == 0.8
    assert plan.per_gpu.memory_fraction_source == "LightLLM default"


def test_cuda_visible_total_is_nvidia_smi_minus_04_gib() -> None:
    plan = plan_profile(load_profile("4x3090"))
    assert plan.gpu.nvidia_smi_mib == 24576
    assert plan.per_gpu.total_gib == pytest.approx(24.0 - 0.4)


def test_a100_is_planned_at_40gb_only_when_the_filter_admits_40gb_boards() -> None:
    base = {"hardware.gpu_names": ["A100 SXM4"], "hardware.num_gpus": 2, "engine.context_length": 32_768}
    small = plan_profile(variant("2x5090-nvfp4", **base, **{"hardware.min_vram_gb": 40}))
    big = plan_profile(variant("2x5090-nvfp4", **base, **{"hardware.min_vram_gb": 79}))
    assert small.gpu.nvidia_smi_mib == 40960
    assert big.gpu.nvidia_smi_mib == 81920
    assert big.kv_pool_tokens > small.kv_pool_tokens
    assert any("smallest: A100 SXM4 40GB" in w for w in small.warnings)
    assert not any("smallest" in w for w in big.warnings)


def test_several_gpu_names_plan_for_the_smallest_and_say_which() -> None:
    profile = variant(
        "h200",
        **{"hardware.gpu_names": ["H200", "H100 NVL", "H100 SXM"], "hardware.min_vram_gb": 79},
    )
    plan = plan_profile(profile)
    assert plan.gpu.name == "H100 SXM"
    assert any("H100 SXM" in w and "smallest" in w for w in plan.warnings)


def test_unknown_gpu_name_falls_back_to_min_vram() -> None:
    plan = plan_profile(variant("h200", **{"hardware.gpu_names": ["Mystery 9000"], "hardware.min_vram_gb": 100}))
    assert plan.gpu.known is False
    # The offer filter guarantees gpu_ram >= min_vram_gb x 1000 MiB, and no more.
    assert plan.gpu.nvidia_smi_mib == 100_000
    assert plan.per_gpu.total_gib == pytest.approx(100_000 / 1024 - 0.4, abs=0.01)
    assert any("Mystery 9000" in w for w in plan.warnings)


# --- verdicts and the public result -----------------------------------------------------------


def test_context_beyond_the_pool_does_not_fit() -> None:
    plan = plan_profile(load_profile("4x3090"), context_length=190_000)
    assert plan.fits is False
    assert plan.context_fits is False
    assert plan.max_concurrent_sequences == 0
    assert "190,000" in plan.reason
    assert "--context-length 190000" in plan.launch_command


def test_context_beyond_the_model_does_not_fit() -> None:
    plan = plan_profile(load_profile("h200"), context_length=300_000)
    assert plan.verdict == "does not fit"
    assert "202,752" in plan.reason


def test_concurrency_is_pool_over_context() -> None:
    plan = plan_profile(load_profile("4x3090"))
    assert plan.context_length == 8192
    assert plan.max_concurrent_sequences == plan.kv_pool_tokens // 8192
    assert plan.max_concurrent_sequences >= 5


def test_uncertainty_band_is_the_sum_of_the_terms_bands() -> None:
    # Issue 11 §3: the band comes from the uncertain terms, not from a fixed +-1 GiB.
    for profile in load_all():
        plan = plan_profile(profile)
        u = plan.uncertainty
        overhead = [t for t in plan.memory_terms if t.name != "weights"]
        assert u.overhead_gib_low == pytest.approx(sum(t.low_gib for t in overhead), abs=0.002)
        assert u.overhead_gib_high == pytest.approx(sum(t.high_gib for t in overhead), abs=0.002)
        assert u.overhead_gib_low <= plan.per_gpu.overhead_gib <= u.overhead_gib_high
        assert u.kv_pool_tokens_low <= plan.kv_pool_tokens <= u.kv_pool_tokens_high
        assert set(u.terms) == {t.name for t in plan.memory_terms if t.high_gib > t.low_gib}
        budget = plan.per_gpu.budget_gib
        assert u.kv_pool_gib_low == pytest.approx(budget - sum(t.high_gib for t in plan.memory_terms), abs=0.01)


def test_every_shipped_profile_plans_and_carries_its_warnings() -> None:
    for profile in load_all():
        plan = plan_profile(profile)
        assert plan.profile == profile.name
        assert plan.per_gpu.total_gib > 0
        for warning in profile.warnings:
            assert warning in plan.warnings


def test_bad_image_override_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="--image"):
        plan_profile(load_profile("4x3090"), image="evil;rm -rf /")


def test_image_tag_parsing() -> None:
    assert parse_image_tag("vllm/vllm-openai:v0.24.0").version == (0, 24, 0)
    assert parse_image_tag("localhost:5000/sglang").tag == "latest"
    assert parse_image_tag("localhost:5000/sglang:v0.5.9").repository == "localhost:5000/sglang"
    assert parse_image_tag("lmsysorg/sglang:v0.5.8@sha256:" + "a" * 64).version == (0, 5, 8)
