"""vLLM's (v1 engine) memory accounting, version by version, as pure functions.

Sources (vllm-project/vllm, read through the search index):
- ``vllm/v1/worker/gpu_worker.py`` @ 35d5cda123ec28581759b6d34cde8052314fb1e6,
  ``Worker.determine_available_memory``: ``available_kv = total x util - non_kv`` with
  ``non_kv = weights + torch_peak_increase + non_torch_increase`` measured around
  ``profile_run()`` (``vllm/utils/mem_utils.py`` @ a6d5c39009eb73797b276cc557ca9659c396ca14,
  ``memory_profiling``). The NCCL communicators exist before the snapshot, so only what the
  profile run's first collectives allocate counts.
- ``vllm/v1/worker/gpu_model_runner.py`` @ 4e1790651fc758c06c7a903dd4cd82364ac91b27:
  ``profile_run`` runs ``_dummy_run(max_num_tokens)`` then ``_dummy_sampler_run`` on
  ``min(max_num_seqs, max_num_tokens)`` rows of logits (and the rejection sampler on
  ``(1 + k) x rows`` when speculative); ``profile_cudagraph_memory`` captures two graphs per
  mode and extrapolates ``first + (n - 1) x per_graph`` (FULL and PIECEWISE share a pool: the
  max of the first captures plus the sum of the rest).
- ``vllm/config/compilation.py`` @ ee525ce4fc8c9cfdedbbad878dcb2bccbb3c4b95: capture sizes
  ``[1, 2, 4] + range(8, 256, 8) + range(256, max + 1, 16)`` with
  ``max = min(max_num_seqs x decode_query_len x 2, 512)`` (1024 on data-centre Blackwell),
  capped at ``max_num_batched_tokens``.
- ``vllm/engine/arg_utils.py`` ``get_batch_defaults``: GPUs with >= 70 GiB that are not an A100 get
  ``max_num_batched_tokens`` 8192 and ``max_num_seqs`` 1024 for the API server, others 2048 / 256.
- ``vllm/v1/core/kv_cache_utils.py``: pool in whole blocks; "GPU KV cache size: N tokens" and
  "Maximum concurrency for L tokens per request: Xx" (two lines up to 0.24, one line from 0.33,
  engines.md §3.4), and the refusal "... the estimated maximum model length is N".

Calibration: the real vLLM 0.24.0 run on an H200 (shared/reference/real-vllm-0.24.0/) fixes two
numbers the source cannot: the non-torch remainder in eager mode (0.23 GiB, so that the eager run's
67.19 GiB / 1,332,528 tokens come out) and the memory per captured CUDA graph (the default run's
capture "took 2.15 GiB" for 51 PIECEWISE + 51 FULL graphs of 47 layers).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from glmdeploy.engines.memory import (
    GIB,
    Attention,
    ImageTag,
    MemoryEstimate,
    MemoryModel,
    MemorySetup,
    MemoryTerm,
    dotted,
    mla_by_date,
    term,
)

if TYPE_CHECKING:
    from collections.abc import Mapping

    from glmdeploy.catalog import GpuSpec, ModelArch

# config/cache.py: 0.9 in 0.15 (L51), 0.92 in 0.33 (L215), engines.md §3.1. The change landed in
# between at an unknown release, so anything older than 0.33 gets the smaller 0.9.
UTIL_OLD, UTIL_NEW, UTIL_NEW_SINCE = 0.9, 0.92, (0, 33)
# "CUDA graph memory profiling is enabled (default since v0.21.0)" (gpu_worker.py log, memory.md §5.1).
GRAPH_PROFILING_SINCE = (0, 21)
GRAPH_PROFILING_ENV = "VLLM_MEMORY_PROFILER_ESTIMATE_CUDAGRAPHS"
# First release that stores the MLA latent for glm4_moe_lite (PR #32759; memory.md §2.4).
MLA_SINCE = (0, 15)
# One line for the KV size and concurrency from 0.33 (engines.md §3.4, vl33).
ONE_LINE_KV_REPORT_SINCE = (0, 33)

# arg_utils.py get_batch_defaults (API server usage context).
BIG_GPU_GIB = 70
BATCH_DEFAULTS_BIG = (8192, 1024)  # (max_num_batched_tokens, max_num_seqs)
BATCH_DEFAULTS_SMALL = (2048, 256)

BLOCK_TOKENS = 16  # CacheConfig default; FLASH_ATTN_MLA and TRITON_MLA use it (the H200 run: 1,332,528 = 16 x 83,283)
CUTLASS_MLA_BLOCK_TOKENS = 128  # CUTLASS MLA on SM10x requires 128-token blocks (memory.md §5.4)

# Sampler warm-up inside the profile run, bytes per logit element: the model's bf16 logits (2),
# the sampler's float32 copy (4), softmax probabilities (4) and the exponential noise of
# random_sample (4) = 14 on the native path the recorded run took (VLLM_USE_FLASHINFER_SAMPLER=0).
# FlashInfer's fused top-k/top-p keeps fewer live copies (8); 16 is memory.md §5.1's upper bound.
SAMPLER_BYTES_PER_LOGIT = (14.0, 8.0, 16.0)
# Rejection sampler warm-up when speculative: (1 + k) x rows of logits (torch.randn in the model
# dtype, 2 B) plus float32 target probabilities (4) and a float32 working copy (4).
REJECTION_BYTES_PER_LOGIT = (10.0, 6.0, 14.0)
# Non-torch memory the profile adds (cuBLAS workspaces, CUDA modules of the kernels it loads) and
# what is left unattributed. Fitted to the recorded eager run (see the module docstring); the band
# is memory.md §5.4's C (0.3-0.6 GiB) stretched down to 0.1.
NON_TORCH_GIB = (0.23, 0.10, 0.45)
# Extra with TP > 1: NCCL and custom all-reduce buffers the profile run's first collectives allocate
# (``_dummy_run(..., is_profile=True)`` "to pre-allocate communication buffers").
NON_TORCH_TP_GIB = (0.25, 0.05, 0.60)
# Memory per captured CUDA graph per decoder layer: 2.15 GiB / 102 graphs / 47 layers (recorded).
GRAPH_MIB_PER_LAYER = 2.15 * 1024 / 102 / 47
GRAPH_BAND = (0.5, 1.6)  # the estimate is off both ways: issues #45178 (over), #57475 (under)
ACTIVATION_BAND = (0.7, 1.5)
# Without shapes (GQA models in the catalogue) memory.md §5.4's A + N range.
FALLBACK_ACTIVATION_GIB = (1.0, 0.5, 2.5)
# CUDA context, other processes and fragmentation must fit outside the budget (memory.md §5.1).
CONTEXT_HEADROOM_GIB = 0.5


def default_utilization(tag: ImageTag) -> float:
    """vLLM's default ``gpu_memory_utilization``: 0.92 from 0.33 (and moving tags), else 0.9."""
    if tag.current or (tag.version is not None and tag.version >= UTIL_NEW_SINCE):
        return UTIL_NEW
    return UTIL_OLD


def batch_defaults(gpu: GpuSpec, total_gib: float) -> tuple[int, int]:
    """(max_num_batched_tokens, max_num_seqs) vLLM picks for the API server on this GPU."""
    if total_gib >= BIG_GPU_GIB and "a100" not in gpu.name.lower():
        return BATCH_DEFAULTS_BIG
    return BATCH_DEFAULTS_SMALL


def graphs_profiled(tag: ImageTag, enforce_eager: bool, env: Mapping[str, str]) -> bool:
    """Whether vLLM counts CUDA graphs inside the budget (never with --enforce-eager)."""
    if enforce_eager:
        return False
    flag = env.get(GRAPH_PROFILING_ENV, "").strip().lower()
    if flag in ("0", "false", "no"):
        return False
    if flag in ("1", "true", "yes"):
        return True
    return tag.at_least(GRAPH_PROFILING_SINCE)


def capture_sizes(
    max_num_seqs: int, max_num_batched_tokens: int, *, decode_query_len: int = 1, blackwell_dc: bool = False
) -> tuple[list[int], list[int]]:
    """(PIECEWISE sizes, FULL decode sizes) the default compilation config captures.

    compilation.py: the list pattern up to ``min(max_num_seqs x q x 2, 512 or 1024)``, capped at
    ``max_num_batched_tokens``; FULL (uniform decode) graphs only up to ``max_num_seqs x q``.
    The recorded H200 run: 1024 sequences -> 51 and 51, largest 512; a 4-sequence run logs
    "PIECEWISE=4 (largest=8), FULL=3 (largest=4)".
    """
    cap = 1024 if blackwell_dc else 512
    largest = min(max_num_seqs * decode_query_len * 2, cap, max_num_batched_tokens)
    sizes = [s for s in (1, 2, 4) if s <= largest]
    if largest >= 8:
        sizes += list(range(8, min(largest + 1, 256), 8))
    if largest >= 256:
        sizes += list(range(256, largest + 1, 16))
    full = [s for s in sizes if s <= max_num_seqs * decode_query_len]
    return sizes, full


def forward_peak_bytes_per_token(arch: ModelArch, tensor_parallel: int) -> float | None:
    """Live activation bytes per token at the widest point of one decoder layer (bf16).

    Layers run one after another, so the peak is the widest layer, not the sum: the hidden state
    and residual (2 x hidden) plus the dense MLP's gate/up output and activation (3 x
    intermediate / TP), or a MoE layer's fused-experts caches (top-k x (3 x moe_intermediate / TP +
    hidden)), or MLA's expanded q/k/v (heads / TP x (q_head + nope + v + v)).
    """
    shape = arch.shape
    if shape is None:
        return None
    tp = tensor_parallel
    h = shape.hidden_size
    residual = 2 * h
    dense = 3 * shape.intermediate_size / tp if shape.first_k_dense_replace else 0.0
    moe = shape.num_experts_per_tok * (3 * shape.moe_intermediate_size / tp + h)
    q_head = shape.qk_nope_head_dim + (arch.qk_rope_head_dim or 0)
    attention = arch.num_attention_heads / tp * (q_head + shape.qk_nope_head_dim + 2 * arch.v_head_dim)
    return 2.0 * (residual + max(dense, moe, attention))


class VllmMemory(MemoryModel):
    kind = "vllm"
    label = "vLLM"
    refuses_short_pool = True

    def attention_for_tag(
        self, tag: ImageTag, arch: ModelArch, env: Mapping[str, str]
    ) -> tuple[Attention, str, list[str]] | None:
        if env.get("VLLM_MLA_DISABLE", "").strip().lower() in ("1", "true", "yes"):
            return "mha", "VLLM_MLA_DISABLE is set: vLLM stores per-head K and V (engines.md §3.7)", []
        if tag.version is not None:
            if tag.version >= MLA_SINCE:
                return "mla", f"vLLM {dotted(tag.version)} (>= 0.15) stores the MLA latent for glm4_moe_lite", []
            return (
                "mha",
                f"vLLM {dotted(tag.version)} predates MLA for glm4_moe_lite (added in 0.15)",
                [
                    "no vLLM release before 0.15 ships glm4_moe_lite (engines.md §0): only patched or nightly"
                    " builds of that era load the model, and they store per-head K/V"
                ],
            )
        return mla_by_date(tag, "vllm")

    def kv_element_bytes(
        self, kv_cache_dtype: str | None, attention: Attention, gpu: GpuSpec
    ) -> tuple[int, str, list[str]]:
        element, name, warnings = super().kv_element_bytes(kv_cache_dtype, attention, gpu)
        cc = gpu.compute_capability
        if name == "fp8" and attention == "mla" and cc is not None and cc < 8.9:
            # memory.md §2.3: vLLM rejects fp8 KV for MLA models below SM89.
            warnings.append(
                f"vLLM rejects fp8 KV for MLA models below compute capability 8.9 ({gpu.label} is "
                f"{cc:g}): the engine will refuse this kv_cache_dtype; planned with bf16 KV"
            )
            return 2, "bf16", warnings
        return element, name, warnings

    def block_size(self, setup: MemorySetup) -> int:
        cc = setup.gpu.compute_capability
        if setup.attention == "mla" and cc is not None and 10.0 <= cc < 11.0:
            return CUTLASS_MLA_BLOCK_TOKENS
        return BLOCK_TOKENS

    def estimate(self, setup: MemorySetup) -> MemoryEstimate:
        arch, tp, tag = setup.arch, setup.tensor_parallel, setup.tag
        if setup.mem_fraction is not None:
            fraction, fraction_source = setup.mem_fraction, "profile"
        else:
            fraction, fraction_source = default_utilization(tag), "vLLM default"
        default_tokens, default_seqs = batch_defaults(setup.gpu, setup.total_gib)
        batched = (
            setup.max_num_batched_tokens
            if setup.max_num_batched_tokens and setup.max_num_batched_tokens > 0
            else default_tokens
        )
        seqs = setup.max_num_seqs or min(default_seqs, batched)
        rows = min(seqs, batched)
        k = setup.speculative_tokens
        w = setup.weights
        terms: list[MemoryTerm] = [
            term(
                "weights",
                w.total_gib,
                w.total_gib * (1 - w.relative_band),
                w.total_gib * (1 + w.relative_band),
                f"model loading ({w.method}): {w.main_gib:.2f} GiB"
                + (f" + MTP draft {w.draft_gib:.2f} GiB" if w.draft_gib else "")
                + " per rank (catalog.weights_per_rank)",
            )
        ]
        per_token = forward_peak_bytes_per_token(arch, tp)
        if per_token is not None:
            activation = batched * per_token / GIB
            terms.append(
                term(
                    "activation_peak",
                    activation,
                    activation * ACTIVATION_BAND[0],
                    activation * ACTIVATION_BAND[1],
                    f"profile run at max_num_batched_tokens={batched}: {per_token:,.0f} B/token at the widest layer"
                    " (gpu_model_runner.py profile_run -> _dummy_run)",
                )
            )
        else:
            terms.append(
                term("activation_peak", *FALLBACK_ACTIVATION_GIB, "memory.md §5.4 A+N range (no shapes for this model)")
            )
        logits = rows * arch.vocab_size
        sampler = [logits * b / GIB for b in SAMPLER_BYTES_PER_LOGIT]
        terms.append(
            term(
                "sampler_warmup",
                sampler[0],
                sampler[1],
                sampler[2],
                f"profile run's _dummy_sampler_run: {rows} x {arch.vocab_size:,} logits x "
                f"{SAMPLER_BYTES_PER_LOGIT[0]:g} B (8-16 B by sampler path)",
            )
        )
        if k:
            rejection = [(1 + k) * logits * b / GIB for b in REJECTION_BYTES_PER_LOGIT]
            # The rejection sampler runs after the sampler released its buffers: only the excess counts.
            extra = [max(0.0, r - s) for r, s in zip(rejection, sampler, strict=True)]
            terms.append(
                term(
                    "mtp_drafter_buffers",
                    extra[0],
                    min(extra),
                    max(extra),
                    f"rejection sampler warm-up on (1 + {k}) x {rows} rows beyond the sampler's peak"
                    " (gpu_model_runner.py _dummy_sampler_run)",
                )
            )
        terms.append(
            term("non_torch", *NON_TORCH_GIB, "cuBLAS workspaces, CUDA modules; fitted to the recorded H200 eager run")
        )
        if tp > 1:
            terms.append(
                term("non_torch_collectives", *NON_TORCH_TP_GIB, "NCCL / custom all-reduce buffers of the profile run")
            )
        profiled = graphs_profiled(tag, setup.enforce_eager, setup.env)
        cc = setup.gpu.compute_capability
        blackwell_dc = cc is not None and 10.0 <= cc < 11.0
        piecewise, full = (
            ([], [])
            if setup.enforce_eager
            else capture_sizes(seqs, batched, decode_query_len=1 + k, blackwell_dc=blackwell_dc)
        )
        graphs_gib = self.graph_memory_gib(arch, len(piecewise) + len(full), speculative=k > 0)
        if profiled and graphs_gib > 0:
            terms.append(
                term(
                    "cuda_graphs",
                    graphs_gib,
                    graphs_gib * GRAPH_BAND[0],
                    graphs_gib * GRAPH_BAND[1],
                    f"profile_cudagraph_memory: PIECEWISE={len(piecewise)} (largest={max(piecewise, default=0)}),"
                    f" FULL={len(full)}, {GRAPH_MIB_PER_LAYER * self._graph_layers(arch, k > 0):.1f} MiB per graph"
                    " (calibrated on the recorded capture)",
                )
            )
        settings: dict[str, int | float | str | bool | None] = {
            "gpu_memory_utilization": fraction,
            "max_num_batched_tokens": batched,
            "max_num_seqs": seqs,
            "block_size": self.block_size(setup),
            "enforce_eager": setup.enforce_eager,
            "cudagraph_memory_profiled": profiled,
            "cudagraph_piecewise_sizes": len(piecewise),
            "cudagraph_full_sizes": len(full),
            "cudagraph_largest_size": max(piecewise, default=0),
            "cudagraph_memory_gib": round(graphs_gib, 3),
            "max_model_len": setup.context_length or arch.max_position_embeddings,
        }
        return MemoryEstimate(
            fraction=fraction,
            fraction_source=fraction_source,
            total_gib=setup.total_gib,
            terms=tuple(terms),
            block_size=self.block_size(setup),
            settings=settings,
        )

    @staticmethod
    def _graph_layers(arch: ModelArch, speculative: bool) -> int:
        return arch.num_layers + (arch.mtp_layers if speculative else 0)

    def graph_memory_gib(self, arch: ModelArch, graphs: int, *, speculative: bool) -> float:
        """CUDA graph pool for ``graphs`` captured graphs (both modes), GiB."""
        return graphs * GRAPH_MIB_PER_LAYER * self._graph_layers(arch, speculative) / 1024

    def extra_warnings(self, setup: MemorySetup, estimate: MemoryEstimate) -> list[str]:
        """Headroom outside the budget: the CUDA context, and graphs when vLLM does not count them."""
        unprofiled = 0.0
        if not estimate.settings["cudagraph_memory_profiled"] and not setup.enforce_eager:
            graphs = int(estimate.settings["cudagraph_piecewise_sizes"] or 0) + int(
                estimate.settings["cudagraph_full_sizes"] or 0
            )
            unprofiled = self.graph_memory_gib(setup.arch, graphs, speculative=setup.speculative)
        headroom = (1 - estimate.fraction) * estimate.total_gib
        needed = CONTEXT_HEADROOM_GIB + unprofiled
        if headroom >= needed:
            return []
        return [
            f"only {headroom:.2f} GiB per GPU stays outside gpu_memory_utilization {estimate.fraction:g}; "
            "the CUDA context"
            + (
                f" and {unprofiled:.2f} GiB of CUDA graphs this build captures after sizing the pool"
                if unprofiled
                else ""
            )
            + f" need about {needed:.2f} GiB (memory.md §5.1, vLLM issue #33920)"
        ]

    def reported_lines(
        self, setup: MemorySetup, estimate: MemoryEstimate, tokens: int, context_length: int
    ) -> list[str]:
        kv_gib = estimate.kv_pool_gib()
        block = estimate.block_size
        lines = [f"Available KV cache memory: {kv_gib:.2f} GiB"]
        if tokens <= 0:
            # kv_cache_utils.py (engines.md §3.4): no block fits at all.
            lines.append(
                "ValueError: No available memory for the cache blocks. Try increasing "
                "`gpu_memory_utilization` when initializing the engine."
            )
            return lines
        if tokens < context_length:
            needed = math.ceil(context_length / block) * block * setup.kv_bytes_per_token / GIB
            lines.append(
                f"ValueError: To serve at least one request with the models's max seq len ({context_length}), "
                f"({needed:.2f} GiB KV cache is needed, which is larger than the available KV cache memory "
                f"({kv_gib:.2f} GiB). Based on the available memory, the estimated maximum model length is "
                f"{self.max_model_len_accepted(tokens, setup.arch.max_position_embeddings)}. Try increasing "
                "`gpu_memory_utilization` or decreasing `max_model_len` when initializing the engine."
            )
            return lines
        concurrency = (tokens / block) / math.ceil(context_length / block)
        size = f"GPU KV cache size: {tokens:,} tokens"
        conc = f"Maximum concurrency for {context_length:,} tokens per request: {concurrency:.2f}x"
        if setup.tag.at_least(ONE_LINE_KV_REPORT_SINCE, unknown=setup.tag.current):
            lines.append(f"{size}, {conc}")
        else:
            lines += [size, conc]
        return lines
