"""Facts about the models glmdeploy knows, as data (sources: shared/reference/memory.md).

Pure data with no I/O: the profile validator reads head counts from here, and the
planner reads everything else.
"""

from __future__ import annotations

from dataclasses import dataclass, field


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
        ),
        ModelArch(
            key="glm-4.7",
            hf_model_type="glm4_moe",
            num_layers=92,
            num_attention_heads=96,
            num_kv_heads=8,
            max_position_embeddings=202_752,
            weights_gb={"bf16": 716.0, "fp8": 360.0},
        ),
        ModelArch(
            key="glm-4.6",
            hf_model_type="glm4_moe",
            num_layers=92,
            num_attention_heads=96,
            num_kv_heads=8,
            max_position_embeddings=202_752,
            weights_gb={"bf16": 714.0, "fp8": 360.0},
        ),
        ModelArch(
            key="glm-4.5",
            hf_model_type="glm4_moe",
            num_layers=92,
            num_attention_heads=96,
            num_kv_heads=8,
            max_position_embeddings=131_072,
            weights_gb={"bf16": 714.0, "fp8": 360.0},
        ),
        ModelArch(
            key="glm-4.5-air",
            hf_model_type="glm4_moe",
            num_layers=46,
            num_attention_heads=96,
            num_kv_heads=8,
            max_position_embeddings=131_072,
            weights_gb={"bf16": 221.0, "fp8": 113.0},
        ),
    )
}
