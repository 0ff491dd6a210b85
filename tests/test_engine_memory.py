"""Each engine's memory terms against the engine source's formula, for setups other than the
recorded one (issue 11 acceptance: CUDA graphs, fp8 KV, the MHA fallback and MTP).

The expected values are recomputed here from the formulas the modules cite (vLLM
gpu_worker.py / gpu_model_runner.py / compilation.py, SGLang model_runner_kv_cache_mixin.py,
LightLLM mem_manager.py), and each band is checked to cover the spread of the engine's own
alternative code paths (sampler implementation, graph estimate error, speculative depth).
"""

from __future__ import annotations

from typing import Any

import pytest

from glmdeploy.catalog import MODEL_ARCHS, weights_per_rank
from glmdeploy.engines import get_engine
from glmdeploy.engines.vllm_memory import GRAPH_BAND, GRAPH_MIB_PER_LAYER, capture_sizes
from glmdeploy.planner import Plan, plan_profile
from glmdeploy.profiles import Profile, load_all, load_profile
from profile_variants import variant

GIB = 2**30
FLASH = MODEL_ARCHS["glm-4.7-flash"]
H200_TOTAL = 139.80  # cudaMemGetInfo total of an H200 (catalog)



def h200_vllm(**changes: Any) -> Profile:
    base = {
        "hardware.gpu_names": ["H200"],
        "hardware.min_vram_gb": 140,
        "engine.image": "vllm/vllm-openai:v0.24.0",
        "engine.mem_fraction": 0.9,
        "engine.context_length": 202_752,
        "engine.enforce_eager": True,
        "engine.disable_log_requests": False,
        "engine.disable_prefix_caching": False,
        "env": {},
    }
    return variant("mi300x", **{**base, **changes})


def term(plan: Plan, name: str) -> float:
    return sum(t.gib for t in plan.memory_terms if t.name == name)


def vllm_eager_pool_bytes(
    *, weights_gib: float, rows: int = 1024, batched: int = 8192, extra_gib: float = 0.0, sampler_bytes: float = 14.0
) -> float:
    """gpu_worker.py: total x util - (weights + profile peak + non-torch); TP1 H200, bf16 activations."""
    activation = batched * 2 * (2 * 2048 + 3 * 10240)  # dense layer 0 is the widest: 69,632 B/token
    sampler = rows * FLASH.vocab_size * sampler_bytes
    return 0.9 * H200_TOTAL * GIB - weights_gib * GIB - activation - sampler - 0.23 * GIB - extra_gib * GIB


def blocks(pool_bytes: float, per_token: int, block: int = 16) -> int:
    return int(pool_bytes) // (per_token * block) * block


# --- CUDA graphs --------------------------------------------------------------------------


def test_capture_sizes_follow_compilation_py() -> None:
    # The recorded H200 run: 1024 sequences, 8192 batched tokens -> PIECEWISE=51, FULL=51, largest 512.
    piecewise, full = capture_sizes(1024, 8192)
    assert (len(piecewise), len(full), max(piecewise)) == (51, 51, 512)
    # A public 4-sequence log: "Profiling CUDA graph memory: PIECEWISE=4 (largest=8), FULL=3 (largest=4)".
    assert capture_sizes(4, 2048) == ([1, 2, 4, 8], [1, 2, 4])
    # MTP with one draft token doubles the decode query length: max_num_seqs x 2 x 2.
    assert max(capture_sizes(4, 2048, decode_query_len=2)[0]) == 16
    # Public vLLM logs (search index), model-independent: 256 sequences
    # "PIECEWISE=51 (largest=512), FULL=35 (largest=256)"; 3 draft tokens with 8 and 14 sequences
    # "PIECEWISE=9 (largest=64), FULL=5 (largest=32)" and "PIECEWISE=15 (largest=112), FULL=8 (largest=56)".
    for seqs, q, logged in ((256, 1, (51, 512, 35, 256)), (8, 4, (9, 64, 5, 32)), (14, 4, (15, 112, 8, 56))):
        piecewise, full = capture_sizes(seqs, 8192, decode_query_len=q)
        assert (len(piecewise), max(piecewise), len(full), max(full)) == logged
    # Data-centre Blackwell caps at 1024 instead of 512; max_num_batched_tokens caps everything.
    assert max(capture_sizes(1024, 8192, blackwell_dc=True)[0]) == 1024
    assert max(capture_sizes(1024, 300)[0]) <= 300


def test_cuda_graph_memory_for_the_2x5090_nvfp4_profile() -> None:
    # Not the recorded setup: 2x RTX 5090, TP2, 4 sequences, vLLM 0.24 (graphs profiled since 0.21).
    plan = plan_profile(load_profile("2x5090-nvfp4"))
    graphs = next(t for t in plan.memory_terms if t.name == "cuda_graphs")
    expected = (4 + 3) * 47 * GRAPH_MIB_PER_LAYER / 1024  # PIECEWISE 1,2,4,8 + FULL 1,2,4
    assert graphs.gib == pytest.approx(expected, abs=1e-3)
    assert (plan.engine_settings["cudagraph_piecewise_sizes"], plan.engine_settings["cudagraph_full_sizes"]) == (4, 3)
    eager = plan_profile(variant("2x5090-nvfp4", **{"engine.enforce_eager": True}))
    assert "cuda_graphs" not in {t.name for t in eager.memory_terms}
    assert eager.per_gpu.kv_pool_gib - plan.per_gpu.kv_pool_gib == pytest.approx(expected, abs=2e-3)
    # The band covers the estimate's known error both ways (issues #45178 over, #57475 under).
    assert graphs.low_gib == pytest.approx(expected * GRAPH_BAND[0], abs=1e-3)
    assert graphs.high_gib == pytest.approx(expected * GRAPH_BAND[1], abs=1e-3)


def test_graph_profiling_depends_on_version_and_env() -> None:
    older = plan_profile(h200_vllm(**{"engine.enforce_eager": False, "engine.image": "vllm/vllm-openai:v0.20.0"}))
    assert older.engine_settings["cudagraph_memory_profiled"] is False
    assert term(older, "cuda_graphs") == 0
    opted_in = plan_profile(
        h200_vllm(
            **{
                "engine.enforce_eager": False,
                "engine.image": "vllm/vllm-openai:v0.20.0",
                "env": {"VLLM_MEMORY_PROFILER_ESTIMATE_CUDAGRAPHS": "1"},
            }
        )
    )
    assert term(opted_in, "cuda_graphs") > 1.5
    opted_out = plan_profile(
        h200_vllm(**{"engine.enforce_eager": False, "env": {"VLLM_MEMORY_PROFILER_ESTIMATE_CUDAGRAPHS": "0"}})
    )
    assert term(opted_out, "cuda_graphs") == 0


# --- fp8 KV -------------------------------------------------------------------------------


def test_fp8_kv_on_h200_follows_the_mla_page_size() -> None:
    # MLAAttentionSpec: page = block x 1 x 576 x dtype bytes -> 27,072 B/token over 47 layers at fp8.
    plan = plan_profile(h200_vllm(**{"engine.kv_cache_dtype": "fp8"}))
    assert (plan.kv_cache_dtype, plan.kv_bytes_per_token) == ("fp8", 27_072)
    weights = weights_per_rank(FLASH, "bf16", 1, speculative=False)
    assert weights is not None
    expected = blocks(vllm_eager_pool_bytes(weights_gib=weights.total_gib), 27_072)
    assert plan.kv_pool_tokens == pytest.approx(expected, abs=16)
    bf16 = plan_profile(h200_vllm())
    assert plan.kv_pool_tokens == pytest.approx(2 * bf16.kv_pool_tokens, abs=32)
    # Band: FlashInfer's sampler (8 B/logit) and memory.md's 16 B bound give pools inside it.
    for sampler_bytes in (8.0, 16.0):
        alt = blocks(vllm_eager_pool_bytes(weights_gib=weights.total_gib, sampler_bytes=sampler_bytes), 27_072)
        assert plan.uncertainty.kv_pool_tokens_low <= alt <= plan.uncertainty.kv_pool_tokens_high


# --- the MHA fallback ---------------------------------------------------------------------


def test_mha_fallback_with_vllm_mla_disable() -> None:
    # engines.md §3.7 / vLLM's glm4_moe_lite test: VLLM_MLA_DISABLE=1 -> 20 heads x (256 + 256) per layer.
    plan = plan_profile(h200_vllm(**{"env": {"VLLM_MLA_DISABLE": "1"}}))
    assert plan.attention == "mha"
    assert plan.kv_bytes_per_token == 962_560
    weights = weights_per_rank(FLASH, "bf16", 1, speculative=False)
    assert weights is not None
    pool = vllm_eager_pool_bytes(weights_gib=weights.total_gib)
    assert plan.kv_pool_tokens == blocks(pool, 962_560)
    # 202,752 tokens do not fit in ~67 GiB at 940 KiB/token: vLLM refuses and names the length it would take.
    assert plan.verdict == "does not fit"
    assert plan.max_model_len_accepted == plan.kv_pool_tokens
    assert any(f"the estimated maximum model length is {plan.kv_pool_tokens}" in line for line in plan.engine_reported)
    for sampler_bytes in (8.0, 16.0):
        alt = blocks(vllm_eager_pool_bytes(weights_gib=weights.total_gib, sampler_bytes=sampler_bytes), 962_560)
        assert plan.uncertainty.kv_pool_tokens_low <= alt <= plan.uncertainty.kv_pool_tokens_high


def test_mha_fallback_in_sglang_divides_heads_by_tp() -> None:
    # model_runner_kv_cache_mixin.py MHA branch: kv_heads(TP) x (head_dim + v_head_dim) x layers x bytes.
    plan = plan_profile(load_profile("4x3090"), image="lmsysorg/sglang:v0.5.7")
    assert plan.attention == "mha"
    assert plan.kv_bytes_per_token == 20 // 4 * (256 + 256) * 47 * 2
    # rest = mfs x (T - C') - W, C' = 0.8 GiB; tokens = rest // cell.
    weights = weights_per_rank(FLASH, "bf16", 4, speculative=False)
    assert weights is not None
    rest = 0.85 * (24576 / 1024 - 0.4 - 0.8) - weights.total_gib
    assert plan.kv_pool_tokens == int(rest * GIB) // plan.kv_bytes_per_token


# --- MTP ----------------------------------------------------------------------------------


def test_mtp_in_vllm_adds_a_layer_draft_weights_and_the_rejection_sampler() -> None:
    plan = plan_profile(h200_vllm(**{"engine.speculative": {"method": "mtp", "num_tokens": 1}}))
    assert plan.kv_bytes_per_token == 48 * 576 * 2
    draft = weights_per_rank(FLASH, "bf16", 1, speculative=True)
    assert draft is not None
    assert plan.per_gpu.draft_weights_gib == pytest.approx(draft.draft_gib, abs=1e-3)
    assert 1.1 <= draft.draft_gib <= 1.3  # one decoder layer + eh_proj: ~0.644 B params
    # _dummy_sampler_run: the rejection sampler's (1 + k) x rows x vocab logits, beyond the sampler's.
    rows, vocab = 1024, FLASH.vocab_size
    extra = max(0.0, (2 * rows * vocab * 10 - rows * vocab * 14) / GIB)
    assert term(plan, "mtp_drafter_buffers") == pytest.approx(extra, abs=1e-3)
    expected = blocks(vllm_eager_pool_bytes(weights_gib=draft.total_gib, extra_gib=extra), 48 * 576 * 2)
    assert plan.kv_pool_tokens == pytest.approx(expected, abs=16)
    deeper = plan_profile(h200_vllm(**{"engine.speculative": {"method": "mtp", "num_tokens": 3}}))
    assert term(deeper, "mtp_drafter_buffers") > term(plan, "mtp_drafter_buffers")
    band = next(t for t in plan.memory_terms if t.name == "mtp_drafter_buffers")
    assert band.low_gib < band.gib < band.high_gib


def test_mtp_in_sglang_and_lightllm() -> None:
    sglang = plan_profile(
        variant(
            "4x3090",
            **{"engine.image": "lmsysorg/sglang:v0.5.9", "engine.speculative": {"method": "mtp", "num_tokens": 3}},
        )
    )
    assert sglang.kv_bytes_per_token == 48 * 576 * 2  # the draft worker's pool: num_nextn_predict_layers = 1
    assert sglang.per_gpu.draft_weights_gib > 0
    lightllm = plan_profile(load_profile("h200-mtp"))
    assert lightllm.kv_bytes_per_token == 48 * 576 * 2
    # mem_manager.py: KV = mem_fraction x T - W - C' (0.8 default, C' 1.0 GiB).
    weights = weights_per_rank(FLASH, "bf16", 1, speculative=True)
    assert weights is not None
    pool = 0.8 * H200_TOTAL - weights.total_gib - 1.0
    assert lightllm.kv_pool_tokens == int(pool * GIB) // (48 * 576 * 2)


# --- what the engine will say ---------------------------------------------------------------


def test_every_profile_reports_a_capacity_line_its_engine_regex_reads_back() -> None:
    for profile in load_all():
        plan = plan_profile(profile)
        text = "\n".join(plan.engine_reported)
        assert get_engine(plan.engine).parse_kv_tokens(text) == plan.kv_pool_tokens, profile.name


def test_vllm_033_prints_one_line() -> None:
    plan = plan_profile(h200_vllm(**{"engine.image": "vllm/vllm-openai:v0.33.0"}))
    assert any(
        line.startswith("GPU KV cache size: ") and "Maximum concurrency for 202,752" in line
        for line in plan.engine_reported
    )


def test_max_model_len_accepted_when_the_context_is_too_long() -> None:
    plan = plan_profile(load_profile("2x5090"), context_length=150_000)
    assert plan.verdict == "does not fit"
    assert plan.max_model_len_accepted == plan.kv_pool_tokens < 150_000
    assert any("the estimated maximum model length is" in line for line in plan.engine_reported)
    sglang = plan_profile(load_profile("4x3090"))
    assert sglang.max_model_len_accepted == min(sglang.kv_pool_tokens, 202_752) - 1


def test_an_empty_pool_reports_each_engines_refusal() -> None:
    # memory.md §6 #14: BF16 on 2x RTX 4090 leaves no room for KV at all.
    vllm = plan_profile(
        variant(
            "4x4090d",
            **{"hardware.gpu_names": ["RTX 4090"], "hardware.num_gpus": 2, "engine.tensor_parallel": 2},
        )
    )
    assert vllm.kv_pool_tokens == 0
    assert any("No available memory for the cache blocks" in line for line in vllm.engine_reported)
    assert get_engine("vllm").classify_failure("\n".join(vllm.engine_reported)).kind == "kv_does_not_fit"  # type: ignore[union-attr]
    sglang = plan_profile(variant("4x3090", **{"engine.mem_fraction": 0.5}))
    assert sglang.kv_pool_tokens == 0
    assert get_engine("sglang").classify_failure("\n".join(sglang.engine_reported)).kind == "kv_does_not_fit"  # type: ignore[union-attr]


def test_the_planner_no_longer_branches_on_the_engine_kind() -> None:
    # Issue 9 §7: engine memory semantics live in engines/; a fourth engine touches engines/ only.
    import inspect

    import glmdeploy.planner as planner

    source = inspect.getsource(planner)
    for needle in ('kind == "', "kind == '", '"vllm"', '"sglang"', '"lightllm"'):
        assert needle not in source
