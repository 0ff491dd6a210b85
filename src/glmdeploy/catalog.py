"""Facts about the models and GPUs glmdeploy knows, as data (sources: shared/reference/memory.md).

Pure data with no I/O: the profile validator reads head counts from here, and the
planner reads everything else.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


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

    @property
    def total_gib(self) -> float:
        return self.total_mib / 1024


def _nv(name: str, mib: int, cc: float, label: str = "") -> GpuSpec:
    return GpuSpec(
        name=name,
        total_mib=mib,
        compute_capability=cc,
        fp8_compute=cc >= 8.9,
        nvfp4_compute=cc >= 10.0,
        label=label or name,
    )


# Several memory sizes are sold under one Vast name (A100 40/80 GB): all variants are listed,
# and the planner picks among the ones the profile's min_vram_gb filter lets through.
GPU_VARIANTS: dict[str, tuple[GpuSpec, ...]] = {
    "RTX 3090": (_nv("RTX 3090", 24576, 8.6),),
    "RTX 4090": (_nv("RTX 4090", 24564, 8.9),),
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
    "H200": (_nv("H200", 143771, 9.0),),
    "H200 NVL": (_nv("H200 NVL", 143771, 9.0),),
    "B200": (_nv("B200", 183359, 10.0),),
    # rocm-smi: 205,822,885,888 B. Vast's spelling is unverified, so both are listed.
    "MI300X": (GpuSpec("MI300X", 196288, vendor="amd", fp8_compute=True, label="MI300X"),),
    "Instinct MI300X": (GpuSpec("Instinct MI300X", 196288, vendor="amd", fp8_compute=True, label="Instinct MI300X"),),
}
