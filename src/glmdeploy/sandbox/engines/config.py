"""The simulated engine's view of its own launch: flags, defaults, and a plausible GPU and KV pool.

Everything a real engine would print or decide at startup is derived here from the argv, with the
defaults of engines.md §2.1/§3.1/§4.1. The KV pool comes from the same engine memory formulas the
planner uses (``glmdeploy.engines.*_memory``) for the GPU of the rented offer, then moved by a
deviation drawn from the instance's seed (``KV_DEVIATION``, up to ±4%), the way a real engine's own
profiler lands a little off any prediction: ``up`` records it and ``status`` compares it with the
plan. Without a known GPU, the GPU is the smallest common card on which the launch would fit.
"""

from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass

from glmdeploy.catalog import GPU_VARIANTS, MODEL_ARCHS, GpuSpec, ModelArch
from glmdeploy.sandbox.engines.launch import LaunchSpec, has_flag, model_path, option

GIB = 1024**3
# The largest relative deviation of the simulated engine's KV pool from the planner's formula.
KV_DEVIATION = 0.04
# CUDA-visible totals in GiB of common cards (memory.md §4: nvidia-smi total minus ~0.4 GiB).
GPU_SIZES_GIB = (23.6, 31.4, 44.6, 47.6, 79.2, 95.2, 140.0, 178.6)
def _version(image: str, kind: str) -> tuple[int, ...]:
    """The release the image's tag pins (glmdeploy.engines' catalogue). For an image of no known engine, a
    version-looking tag is taken at its word; a moving tag (latest, nightly) or any other means the newest
    release whose flags were read."""
    from glmdeploy.engines import get_engine
    from glmdeploy.engines.flags import history

    engine = get_engine(kind)
    info = engine.image_version(image)
    if info.version is not None:
        return info.version
    if info.kind is None:
        tag = image.split("@", 1)[0].rpartition("/")[2].partition(":")[2]
        match = re.match(r"v?(\d+)\.(\d+)(?:\.(\d+))?", tag)
        if match:
            return tuple(int(g or 0) for g in match.groups())
    return history(kind).newest


def _arch(path: str) -> ModelArch:
    lowered = path.lower()
    for key in ("glm-4.7-flash", "glm-4.5-air", "glm-4.7", "glm-4.6", "glm-4.5"):
        if key in lowered:
            return MODEL_ARCHS[key]
    return MODEL_ARCHS["glm-4.7-flash"]


def _quant(path: str) -> str:
    lowered = path.lower()
    for quant in ("nvfp4", "fp8", "awq"):
        if quant in lowered:
            return quant
    return "bf16"


def _float(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


@dataclass(frozen=True)
class EngineConfig:
    """What the simulated engine prints and how it behaves, derived once from the launch."""

    spec: LaunchSpec
    version: tuple[int, ...]
    model_path: str
    arch: ModelArch
    architecture_name: str  # e.g. Glm4MoeLiteForCausalLM
    quant: str
    weights_gb: float  # whole checkpoint, 10^9 bytes
    tp: int
    host: str
    port: int  # the port inside the container (the sandbox maps it)
    context_len: int
    mem_fraction: float
    kv_dtype: str  # torch dtype name as logged
    kv_bytes_per_token: int
    gpu_total_gib: float
    weights_gib_per_rank: float
    kv_pool_gib: float
    kv_tokens: int
    max_running_requests: int
    chunked_prefill_size: int
    speculative: bool
    cuda_graphs: bool
    reasoning_parser: str | None
    tool_call_parser: str | None
    auto_tool_choice: bool
    num_shards: int

    @property
    def kind(self) -> str:
        return self.spec.kind

    @property
    def version_text(self) -> str:
        return ".".join(str(p) for p in self.version)

    @property
    def max_concurrency(self) -> float:
        return self.kv_tokens / self.context_len

    @property
    def dtype_name(self) -> str:
        return "torch.float16" if self.quant == "fp16" else "torch.bfloat16"


def kv_deviation(seed: int) -> float:
    """The simulated profiler's relative deviation from the formula, deterministic for ``seed``."""
    return random.Random(f"kv-capacity:{seed}").uniform(-KV_DEVIATION, KV_DEVIATION)


def _gpu(gpu_name: str | None, gpu_ram_mib: int | None) -> GpuSpec | None:
    variants = GPU_VARIANTS.get(gpu_name or "")
    if not variants:
        return None
    if gpu_ram_mib is None:
        return variants[0]
    return min(variants, key=lambda v: abs(v.total_mib - gpu_ram_mib))


@dataclass(frozen=True)
class _Pool:
    gpu_total_gib: float
    weights_gib: float
    pool_gib: float
    tokens: int
    per_token: int


def _formula_pool(
    spec: LaunchSpec, gpu: GpuSpec, arch: ModelArch, quant: str, tp: int, version: tuple[int, ...], seed: int
) -> _Pool:
    """The engine's KV pool from glmdeploy.engines' memory model, moved by the seeded deviation."""
    from glmdeploy.engines.memory import Attention, MemorySetup, memory_model, parse_image_tag
    from glmdeploy.planner import kv_bytes_per_token, rank_weights

    argv = spec.argv
    model = memory_model(spec.kind)
    tag = parse_image_tag(spec.image) if spec.image else parse_image_tag("x:" + ".".join(map(str, version)))
    attention: Attention = "mla"
    if arch.is_mla:
        found = model.attention_for_tag(tag, arch, {})
        attention = found[0] if found is not None else "mla"
    else:
        attention = "mha"
    spec_tokens = _int(
        option(argv, "--speculative-config.num_speculative_tokens", "--speculative-num-steps", "--mtp_step")
    ) or (1 if option(argv, "--speculative-algorithm", "--speculative-config.method", "--mtp_mode") else 0)
    kv_flag = option(argv, "--kv-cache-dtype")
    element, _, _ = model.kv_element_bytes(None if kv_flag in (None, "auto") else kv_flag, attention, gpu)
    per_token, _ = kv_bytes_per_token(
        arch, attention, tensor_parallel=tp, element_bytes=element, speculative=spec_tokens > 0
    )
    weights = rank_weights(
        arch, quant, arch.weights_gb.get(quant) or arch.weights_gb["bf16"], tp, speculative=spec_tokens > 0
    )
    batched = _int(option(argv, "--max-num-batched-tokens", "--chunked-prefill-size", "--chunked_prefill_size"))
    setup = MemorySetup(
        arch=arch,
        gpu=gpu,
        total_gib=gpu.cuda_visible_gib,
        tag=tag,
        tensor_parallel=tp,
        weights=weights,
        kv_bytes_per_token=per_token,
        attention=attention,
        context_length=spec.context_length,
        mem_fraction=_float(option(argv, "--gpu-memory-utilization", "--mem-fraction-static", "--mem_fraction")),
        enforce_eager=has_flag(argv, "--enforce-eager"),
        max_num_seqs=_int(option(argv, "--max-num-seqs", "--max-running-requests", "--running_max_req_size")),
        max_num_batched_tokens=batched if batched and batched > 0 else None,
        cuda_graph_max_batch=_int(option(argv, "--cuda-graph-max-bs", "--graph_max_batch_size")),
        speculative_tokens=spec_tokens,
    )
    estimate = model.estimate(setup)
    pool_gib = estimate.kv_pool_gib() * (1 + kv_deviation(seed))
    block = estimate.block_size
    tokens = max(0, int(pool_gib * GIB) // (per_token * block) * block)
    return _Pool(gpu.cuda_visible_gib, weights.total_gib, pool_gib, tokens, per_token)


def engine_config(
    spec: LaunchSpec, *, gpu_name: str | None = None, gpu_ram_mib: int | None = None, seed: int = 0
) -> EngineConfig:
    argv = spec.argv
    kind = spec.kind
    path = model_path(kind, argv) or spec.served_model
    arch = _arch(path)
    quant = _quant(path)
    dtype = option(argv, "--dtype", "--data_type")
    if quant == "bf16" and dtype in ("float16", "half", "fp16"):
        quant = "fp16"
    weights_gb = arch.weights_gb.get(quant) or arch.weights_gb["bf16"]
    tp = _int(option(argv, "--tp-size", "--tensor-parallel-size", "-tp", "--tp")) or 1
    speculative = bool(
        option(argv, "--speculative-algorithm", "--speculative-config.method", "--speculative-config", "--mtp_mode")
    )
    defaults = {"sglang": ("127.0.0.1", 30000), "vllm": ("0.0.0.0", 8000), "lightllm": ("127.0.0.1", 8000)}
    host = option(argv, "--host") or defaults[kind][0]
    port = _int(option(argv, "--port")) or defaults[kind][1]
    version = _version(spec.image, kind)

    if kind == "sglang":
        fraction = _float(option(argv, "--mem-fraction-static")) or (0.81 if speculative else 0.835)
        kv_flag = option(argv, "--kv-cache-dtype") or "auto"
        cuda_graphs = not has_flag(argv, "--disable-cuda-graph")
    elif kind == "vllm":
        fraction = _float(option(argv, "--gpu-memory-utilization")) or (0.92 if version >= (0, 33) else 0.9)
        kv_flag = option(argv, "--kv-cache-dtype") or "auto"
        cuda_graphs = not has_flag(argv, "--enforce-eager")
    else:
        fraction = _float(option(argv, "--mem_fraction")) or 0.8
        kv_flag = "auto"  # --llm_kv_type is ignored for MLA models (engines.md §4.1)
        cuda_graphs = not has_flag(argv, "--disable_cudagraph")
    kv_elem = 1 if "fp8" in kv_flag else 2
    kv_dtype = "torch.float8_e4m3fn" if kv_elem == 1 else ("torch.float16" if quant == "fp16" else "torch.bfloat16")

    # MTP's draft layer shares the pool in vLLM and LightLLM (engines.md §1, §4.6).
    layers = arch.num_layers + (arch.mtp_layers if speculative and kind != "sglang" else 0)
    if arch.is_mla:
        assert arch.kv_lora_rank is not None and arch.qk_rope_head_dim is not None
        per_token = (arch.kv_lora_rank + arch.qk_rope_head_dim) * layers * kv_elem  # replicated per rank
    else:
        heads = max(1, arch.num_kv_heads // tp)
        per_token = heads * (arch.k_head_dim + arch.v_head_dim) * layers * kv_elem

    context_len = spec.context_length or arch.max_position_embeddings
    rf = arch.replicated_fraction
    weights_gib = weights_gb * 1e9 / GIB * (rf + (1 - rf) / tp)
    overhead_gib = 1.5 if kind == "vllm" else 1.0
    gpu = GPU_SIZES_GIB[-1]
    for size in GPU_SIZES_GIB:
        pool = fraction * size - weights_gib - overhead_gib
        if pool > 0 and pool * GIB / per_token >= context_len:
            gpu = size
            break
    pool_gib = max(fraction * gpu - weights_gib - overhead_gib, per_token * context_len / GIB)
    tokens = int(pool_gib * GIB // per_token)
    if kind == "vllm":
        tokens -= tokens % 16  # whole blocks
    known_gpu = _gpu(gpu_name, gpu_ram_mib)
    if known_gpu is not None:
        formula = _formula_pool(spec, known_gpu, arch, quant, tp, version, seed)
        gpu, weights_gib, per_token = formula.gpu_total_gib, formula.weights_gib, formula.per_token
        # A pool shorter than the context would stop a real vLLM or LightLLM; the sandbox's engines
        # model that failure as a fault, so the simulated pool never goes below one context here.
        floor = per_token * context_len
        pool_gib = max(formula.pool_gib, floor / GIB)
        tokens = max(formula.tokens, context_len)
    chunked = _int(option(argv, "--chunked-prefill-size", "--max-num-batched-tokens", "--chunked_prefill_size"))
    if not chunked or chunked < 0:
        chunked = 8192 if gpu >= 60 else (4096 if gpu >= 35 else 2048)
    running = _int(option(argv, "--max-running-requests", "--max-num-seqs", "--running_max_req_size"))
    if running is None:
        if kind == "sglang":
            running = 48 if speculative else min(4096, max(1, tokens // 2))
        elif kind == "vllm":
            running = 1024 if gpu >= 70 else 256
        else:
            running = 256
    architecture = "Glm4MoeLiteForCausalLM" if arch.key == "glm-4.7-flash" else "Glm4MoeForCausalLM"
    return EngineConfig(
        spec=spec,
        version=version,
        model_path=path,
        arch=arch,
        architecture_name=architecture,
        quant=quant,
        weights_gb=weights_gb,
        tp=tp,
        host=host,
        port=port,
        context_len=context_len,
        mem_fraction=fraction,
        kv_dtype=kv_dtype,
        kv_bytes_per_token=per_token,
        gpu_total_gib=gpu,
        weights_gib_per_rank=weights_gib,
        kv_pool_gib=pool_gib,
        kv_tokens=tokens,
        max_running_requests=running,
        chunked_prefill_size=chunked,
        speculative=speculative,
        cuda_graphs=cuda_graphs,
        reasoning_parser=option(argv, "--reasoning-parser", "--reasoning_parser"),
        tool_call_parser=option(argv, "--tool-call-parser", "--tool_call_parser"),
        auto_tool_choice=has_flag(argv, "--enable-auto-tool-choice"),
        num_shards=max(1, math.ceil(weights_gb / 5.0)),
    )
