"""Facts about the models and GPUs glmdeploy knows, as data (sources: shared/reference/memory.md).

Pure data with no I/O: the profile validator reads head counts from here, and the
planner reads everything else.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

GIB = 2**30


@dataclass(frozen=True)
class MoeMlaShape:
    """The config.json fields that size a DeepSeek-style MLA + MoE model's tensors.

    Source: transformers ``models/glm4_moe_lite/configuration_glm4_moe_lite.py`` defaults, which
    equal the released GLM-4.7-Flash config (memory.md §1.1); vLLM's real 0.24.0 run read the same
    ``config.json`` (shared/reference/real-vllm-0.24.0/README.md).
    """

    hidden_size: int
    q_lora_rank: int
    qk_nope_head_dim: int
    intermediate_size: int  # the dense (first_k_dense_replace) layers' MLP
    moe_intermediate_size: int
    n_routed_experts: int
    num_experts_per_tok: int
    n_shared_experts: int
    first_k_dense_replace: int


@dataclass(frozen=True)
class ModelArch:
    """Architecture of one model family member, enough to size weights and KV cache."""

    key: str
    hf_model_type: str
    num_layers: int
    num_attention_heads: int
    num_kv_heads: int
    max_position_embeddings: int
    # MLA (DeepSeek-style latent attention); None for GQA models.
    kv_lora_rank: int | None = None
    qk_rope_head_dim: int | None = None
    # Per-head K and V widths used when the engine falls back to MHA/GQA storage.
    k_head_dim: int = 128
    v_head_dim: int = 128
    mtp_layers: int = 1
    # Checkpoint sizes in GB (10^9 bytes) per quantisation, as shipped.
    weights_gb: dict[str, float] = field(default_factory=dict)
    # Fraction of the weights that cannot be sharded by tensor parallelism.
    replicated_fraction: float = 0.005
    # Share of the checkpoint that is the main model; the rest is the MTP draft layer and its
    # own embedding/head copies, which an engine loads only for speculative decoding.
    main_fraction: float = 1.0
    vocab_size: int = 151_552
    # Full tensor shapes, when known: weights are then computed per quant and per rank from them
    # (``weights_per_rank``) instead of scaling the checkpoint size.
    shape: MoeMlaShape | None = None

    @property
    def is_mla(self) -> bool:
        return self.kv_lora_rank is not None

    def valid_tensor_parallel(self, tp: int) -> bool:
        """TP must split the attention heads evenly (GLM-4.7-Flash: 20 heads -> 1, 2, 4, 5, 10, 20)."""
        return tp >= 1 and self.num_attention_heads % tp == 0


MODEL_ARCHS: dict[str, ModelArch] = {
    arch.key: arch
    for arch in (
        ModelArch(
            key="glm-4.7-flash",
            hf_model_type="glm4_moe_lite",
            num_layers=47,
            num_attention_heads=20,
            num_kv_heads=20,
            max_position_embeddings=202_752,
            kv_lora_rank=512,
            qk_rope_head_dim=64,
            k_head_dim=256,
            v_head_dim=256,
            # memory.md §1.3: BF16 checkpoint 62.4 GB incl. MTP; NVFP4 20.4 GB; AWQ 18.4 GB.
            weights_gb={"bf16": 62.4, "fp16": 62.4, "fp8": 32.0, "nvfp4": 20.4, "awq": 18.4},
            # memory.md §1.2: 0.14 B of 29.94 B main-model params stay replicated; checkpoint 31.22 B.
            replicated_fraction=0.14 / 29.943,
            main_fraction=29.943 / 31.22,
            vocab_size=154_880,
            shape=MoeMlaShape(
                hidden_size=2048,
                q_lora_rank=768,
                qk_nope_head_dim=192,
                intermediate_size=10240,
                moe_intermediate_size=1536,
                n_routed_experts=64,
                num_experts_per_tok=4,
                n_shared_experts=1,
                first_k_dense_replace=1,
            ),
        ),
        ModelArch(
            key="glm-4.7",
            hf_model_type="glm4_moe",
            num_layers=92,
            num_attention_heads=96,
            num_kv_heads=8,
            max_position_embeddings=202_752,
            weights_gb={"bf16": 716.0, "fp8": 360.0},
            main_fraction=355 / 358,  # memory.md §3: 355B, ~358B with MTP
        ),
        ModelArch(
            key="glm-4.6",
            hf_model_type="glm4_moe",
            num_layers=92,
            num_attention_heads=96,
            num_kv_heads=8,
            max_position_embeddings=202_752,
            weights_gb={"bf16": 714.0, "fp8": 360.0},
            main_fraction=355 / 358,
        ),
        ModelArch(
            key="glm-4.5",
            hf_model_type="glm4_moe",
            num_layers=92,
            num_attention_heads=96,
            num_kv_heads=8,
            max_position_embeddings=131_072,
            weights_gb={"bf16": 714.0, "fp8": 360.0},
            main_fraction=355 / 358,
        ),
        ModelArch(
            key="glm-4.5-air",
            hf_model_type="glm4_moe",
            num_layers=46,
            num_attention_heads=96,
            num_kv_heads=8,
            max_position_embeddings=131_072,
            weights_gb={"bf16": 221.0, "fp8": 113.0},
            main_fraction=106 / 110.5,  # memory.md §3: 106B, 110.5B with MTP
        ),
    )
}


@dataclass(frozen=True)
class GpuSpec:
    """One GPU model as Vast.ai sells it (memory.md §4)."""

    name: str
    # Total memory as nvidia-smi (or rocm-smi) prints it, in MiB; Vast's gpu_ram reports the same figure.
    total_mib: int
    vendor: Literal["nvidia", "amd"] = "nvidia"
    # None for AMD: the fp8-KV rule below SM89 is a CUDA rule.
    compute_capability: float | None = None
    fp8_compute: bool = False
    nvfp4_compute: bool = False
    label: str = ""
    # What cudaMemGetInfo reports as total, GiB, where a public capture shows it; otherwise the
    # planner takes nvidia-smi's total minus CUDA_CONTEXT_GIB (memory.md §4).
    cuda_total_gib: float | None = None

    @property
    def total_gib(self) -> float:
        return self.total_mib / 1024

    @property
    def cuda_visible_gib(self) -> float:
        """The total an engine multiplies by its memory fraction."""
        return self.cuda_total_gib if self.cuda_total_gib is not None else self.total_gib - CUDA_CONTEXT_GIB


# memory.md §4/§5.4: cudaMemGetInfo reports ~0.3-0.5 GiB less than nvidia-smi.
CUDA_CONTEXT_GIB = 0.4


def _nv(name: str, mib: int, cc: float, label: str = "", cuda_total_gib: float | None = None) -> GpuSpec:
    return GpuSpec(
        name=name,
        total_mib=mib,
        compute_capability=cc,
        fp8_compute=cc >= 8.9,
        nvfp4_compute=cc >= 10.0,
        label=label or name,
        cuda_total_gib=cuda_total_gib,
    )


# torch's OOM message prints cudaMemGetInfo's total: "GPU 0 has a total capacity of 139.80 GiB"
# on H200s (several public traces; 139.81 in others) and 23.52 GiB on an RTX 4090 (vLLM issue
# #33920, memory.md §4).
H200_CUDA_TOTAL_GIB = 139.80
RTX4090_CUDA_TOTAL_GIB = 23.52


# Several memory sizes are sold under one Vast name (A100 40/80 GB): all variants are listed,
# and the planner picks among the ones the profile's min_vram_gb filter lets through.
GPU_VARIANTS: dict[str, tuple[GpuSpec, ...]] = {
    "RTX 3090": (_nv("RTX 3090", 24576, 8.6),),
    "RTX 4090": (_nv("RTX 4090", 24564, 8.9, cuda_total_gib=RTX4090_CUDA_TOTAL_GIB),),
    # The 4090 D's Vast spelling and its total are unverified (memory.md §4); same 24 GB board.
    "RTX 4090D": (_nv("RTX 4090D", 24564, 8.9),),
    "RTX 4090 D": (_nv("RTX 4090 D", 24564, 8.9),),
    "RTX 5090": (_nv("RTX 5090", 32607, 12.0),),
    "RTX PRO 6000 WS": (_nv("RTX PRO 6000 WS", 97887, 12.0),),
    "RTX PRO 6000 S": (_nv("RTX PRO 6000 S", 97887, 12.0),),
    "L40S": (_nv("L40S", 46068, 8.9),),
    "RTX A6000": (_nv("RTX A6000", 49140, 8.6),),
    "A100 SXM4": (_nv("A100 SXM4", 40960, 8.0, "A100 SXM4 40GB"), _nv("A100 SXM4", 81920, 8.0, "A100 SXM4 80GB")),
    "A100 PCIE": (_nv("A100 PCIE", 40960, 8.0, "A100 PCIE 40GB"), _nv("A100 PCIE", 81920, 8.0, "A100 PCIE 80GB")),
    "H100 PCIE": (_nv("H100 PCIE", 81559, 9.0),),
    "H100 SXM": (_nv("H100 SXM", 81559, 9.0),),
    # Not in memory.md §4: 95830 MiB from public nvidia-smi captures of "NVIDIA H100 NVL" (94 GB).
    "H100 NVL": (_nv("H100 NVL", 95830, 9.0),),
    "H200": (_nv("H200", 143771, 9.0, cuda_total_gib=H200_CUDA_TOTAL_GIB),),
    "H200 NVL": (_nv("H200 NVL", 143771, 9.0, cuda_total_gib=H200_CUDA_TOTAL_GIB),),
    "B200": (_nv("B200", 183359, 10.0),),
    # rocm-smi: 205,822,885,888 B. Vast's spelling is unverified, so both are listed.
    "MI300X": (GpuSpec("MI300X", 196288, vendor="amd", fp8_compute=True, label="MI300X"),),
    "Instinct MI300X": (GpuSpec("Instinct MI300X", 196288, vendor="amd", fp8_compute=True, label="Instinct MI300X"),),
}


# --- weights per rank, from the config --------------------------------------------------------

# Bytes per weight element of the layers a checkpoint quantises, and which layers those are.
# - bf16/fp16: everything at 2 B.
# - fp8 (DeepSeek-style 128x128 block FP8, e4m3 + one float32 scale per block): every linear layer
#   of the decoder; router gates, norms, embeddings and the head stay BF16 (memory.md §1.3
#   "W8A8 2D-block, mixed FP8/BF16").
# - nvfp4 (GadflyII/GLM-4.7-Flash-NVFP4 card, memory.md §1.3): routed + shared experts and the dense
#   MLP at 4 bits with one e4m3 scale per 16 elements (0.5 + 1/16 B); MLA attention, norms, gates
#   and embeddings BF16.
# - awq (4-bit, group 128, fp16 scale + 4-bit zero point per group): every decoder linear layer
#   except the router gate.
QUANT_BYTES: dict[str, float] = {
    "bf16": 2.0,
    "fp16": 2.0,
    "fp8": 1.0 + 4 / (128 * 128),
    "nvfp4": 0.5 + 1 / 16,
    "awq": 0.5 + 2 / 128 + 0.5 / 128,
}
# Which parts each quant stores at QUANT_BYTES (the rest at 2 B).
QUANTISED_PARTS: dict[str, frozenset[str]] = {
    "bf16": frozenset(),
    "fp16": frozenset(),
    "fp8": frozenset({"attention", "experts", "dense_mlp"}),
    "nvfp4": frozenset({"experts", "dense_mlp"}),
    "awq": frozenset({"attention", "experts", "dense_mlp"}),
}
# vLLM pads the vocabulary to a multiple of 64 before splitting it across TP ranks
# (vllm/model_executor/layers/vocab_parallel_embedding.py, DEFAULT_VOCAB_PADDING_SIZE = 64).
VOCAB_PADDING = 64


@dataclass(frozen=True)
class WeightsPerRank:
    """One TP rank's share of the weights, GiB, and how it was obtained."""

    main_gib: float
    draft_gib: float
    method: Literal["config", "checkpoint"]
    # Relative uncertainty of the figure: the config count matched the real vLLM 0.24.0 load
    # (55.80 vs 55.87 GiB) to 0.13%; quantised layouts vary per checkpoint; a checkpoint-size
    # scaling is rougher still.
    relative_band: float
    parts_gib: dict[str, float] = field(default_factory=dict)

    @property
    def total_gib(self) -> float:
        return self.main_gib + self.draft_gib


def _mla_layer_params(arch: ModelArch, shape: MoeMlaShape) -> tuple[int, int, int]:
    """(replicated, sharded attention) parameters of one MLA attention block, and its norms."""
    h, heads = shape.hidden_size, arch.num_attention_heads
    assert arch.kv_lora_rank is not None and arch.qk_rope_head_dim is not None
    q_head = shape.qk_nope_head_dim + arch.qk_rope_head_dim
    # q_a and kv_a (with the rope part) are replicated on every rank; q_b, kv_b and o are split.
    replicated = h * shape.q_lora_rank + h * (arch.kv_lora_rank + arch.qk_rope_head_dim)
    sharded = (
        shape.q_lora_rank * heads * q_head
        + arch.kv_lora_rank * heads * (shape.qk_nope_head_dim + arch.v_head_dim)
        + heads * arch.v_head_dim * h
    )
    norms = shape.q_lora_rank + arch.kv_lora_rank + 2 * h  # q_a/kv_a layernorms, input/post-attention norms
    return replicated, sharded, norms


def weights_per_rank(arch: ModelArch, quant: str, tensor_parallel: int, *, speculative: bool) -> WeightsPerRank | None:
    """Weights on one TP rank computed from the model's config, or None when its shapes are unknown.

    Per rank: replicated tensors (q_a/kv_a projections, norms, router gates) in full on every
    rank; everything else (q_b/kv_b/o, experts, shared experts, dense MLP) split TP ways;
    embeddings and head split by vocabulary, padded to 64 rows. The MTP layer (one decoder layer
    plus ``eh_proj`` and its norms) is loaded only for speculative decoding; it shares the target's
    embeddings and head (vLLM ``EagleProposer.load_model``; SGLang ``set_embed_and_head``).
    """
    shape = arch.shape
    if shape is None or not arch.is_mla or quant not in QUANT_BYTES:
        return None
    tp = tensor_parallel
    q = QUANT_BYTES[quant]
    parts = QUANTISED_PARTS[quant]

    def width(part: str) -> float:
        return q if part in parts else 2.0

    h = shape.hidden_size
    replicated, attn_sharded, norms = _mla_layer_params(arch, shape)
    expert = 3 * h * shape.moe_intermediate_size
    experts = (shape.n_routed_experts + shape.n_shared_experts) * expert
    gate = shape.n_routed_experts * h + shape.n_routed_experts  # router + e_score_correction_bias
    dense = 3 * h * shape.intermediate_size
    moe_layers = arch.num_layers - shape.first_k_dense_replace

    attention_b = arch.num_layers * (replicated + attn_sharded / tp) * width("attention")
    norms_b = (arch.num_layers * norms + h) * 2.0
    experts_b = moe_layers * experts / tp * width("experts")
    gates_b = moe_layers * gate * 2.0
    dense_b = shape.first_k_dense_replace * dense / tp * width("dense_mlp")
    vocab_rows = math.ceil(math.ceil(arch.vocab_size / VOCAB_PADDING) * VOCAB_PADDING / tp)
    embed_b = 2 * vocab_rows * h * 2.0  # embed_tokens + lm_head, untied, BF16
    # vLLM RotaryEmbedding keeps a (max_position, rotary_dim) cos/sin cache in the model dtype.
    rope_b = arch.max_position_embeddings * (arch.qk_rope_head_dim or 0) * 2.0
    main_parts = {
        "attention": attention_b / GIB,
        "experts": experts_b / GIB,
        "dense_mlp": dense_b / GIB,
        "embeddings_and_head": embed_b / GIB,
        "norms_gates_buffers": (norms_b + gates_b + rope_b) / GIB,
    }
    draft = 0.0
    if speculative:
        per_mtp = (
            (replicated + attn_sharded / tp) * width("attention")
            + experts / tp * width("experts")
            + (gate + norms + 3 * h) * 2.0  # gate, layer norms, enorm/hnorm/shared_head.norm
            + 2 * h * h / tp * 2.0  # eh_proj, kept BF16
        )
        draft = arch.mtp_layers * per_mtp / GIB
        main_parts["mtp_draft"] = draft
    main = sum(v for k, v in main_parts.items() if k != "mtp_draft")
    band = 0.005 if quant in ("bf16", "fp16") else 0.03
    return WeightsPerRank(main, draft, "config", band, main_parts)
