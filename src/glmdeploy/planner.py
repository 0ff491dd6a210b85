"""Will a profile's model fit its GPUs, and with how much context? (issue 2 §6)

Everything here is pure arithmetic on a ``Profile`` and the facts in ``glmdeploy.catalog``;
no I/O. Sources are shared/reference/memory.md (cited as "memory.md §N") and
shared/reference/engines.md. The one formula every engine shares, per GPU (memory.md §5.4)::

    KV pool = fraction x T - W - overhead
    T        = CUDA-visible total = nvidia-smi total - 0.4 GiB
    W        = this rank's share of the weights (+ the MTP draft when speculative)
    fraction = vLLM gpu_memory_utilization | SGLang mem_fraction_static | LightLLM mem_fraction
    overhead = vLLM: activations + non-torch (+ CUDA graphs when profiled); SGLang/LightLLM: C'

The pool in tokens is ``KV pool / KV bytes per token per rank``. The estimate is reported with
a range (overhead 1 GiB vs 3 GiB, memory.md §5.4) because the overhead terms were not measured.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict

from glmdeploy.catalog import GPU_VARIANTS, MODEL_ARCHS, GpuSpec, ModelArch
from glmdeploy.errors import UsageError

if TYPE_CHECKING:
    from glmdeploy.profiles.model import Profile

Attention = Literal["mla", "mha"]
Verdict = Literal["fits", "tight", "does not fit"]

GIB = 2**30
GB = 10**9
# memory.md §4/§5.4: cudaMemGetInfo reports ~0.3-0.5 GiB less than nvidia-smi.
CUDA_CONTEXT_GIB = 0.4
# memory.md §5.4: "report a range (estimate with A+N+G = 1 GiB and = 3 GiB)".
OVERHEAD_RANGE_GIB = (1.0, 3.0)
# Central overhead estimates, chosen to reproduce memory.md §5.5's worked examples.
SGLANG_OVERHEAD_GIB = 0.8  # C': CUDA context, NCCL, misc before profiling (§5.4: 0.5-1.5)
LIGHTLLM_OVERHEAD_GIB = 1.0  # C' (§5.5 H200 example)
VLLM_ACTIVATION_GIB = 1.0  # A + N (§5.4: 1.0-2.5; §5.5 2x5090 BF16)
VLLM_CUDA_GRAPH_GIB = 0.5  # G when vLLM profiles graphs, default since v0.21 (§5.1; §5.4: 0.2-1.5)
VLLM_CONTEXT_GIB = 0.5  # C, lives in (1 - util) x T (§5.4: 0.3-0.6)
VLLM_DEFAULT_MAX_NUM_SEQS = 256
# memory.md §5.1: the sampler warm-up sorts max_num_seqs x vocab logits, ~12-16 B per element.
SAMPLER_BYTES_PER_LOGIT = 16
# LightLLM: engines.md §4.1 read api_cli.py at HEAD (L154-170) and its startup log line
# ("... with the mem_fraction 0.8"): 0.8. memory.md §5.3 says 0.9 from an older reading; 0.8 is
# both the newer source and the smaller (safer) pool.
LIGHTLLM_DEFAULT_MEM_FRACTION = 0.8
# engines.md §3.1: 0.9 in vLLM 0.15 (config/cache.py L51), 0.92 in 0.33 (L215). When the change
# landed in between is unknown, so anything older than 0.33 gets the smaller 0.9.
VLLM_UTIL_OLD, VLLM_UTIL_NEW, VLLM_UTIL_NEW_SINCE = 0.9, 0.92, (0, 33)
VLLM_GRAPH_PROFILING_SINCE = (0, 21)
# First builds that store the MLA latent for glm4_moe_lite (memory.md §2.4, engines.md §0).
VLLM_MLA_SINCE = (0, 15)
SGLANG_MLA_SINCE = (0, 5, 8)
LIGHTLLM_FLASH_SINCE = (1, 2)
MLA_NIGHTLY_SINCE = date(2026, 1, 22)  # memory.md §6 "Era": nightlies before 2026-01-22 are MHA
SGLANG_MLA_TAGS = ("dev-pr-17247",)  # the Vast guide's MLA build (memory.md §2.4)
CURRENT_TAGS = ("latest", "nightly", "main", "dev")
VLLM_BLOCK_TOKENS = 16


class PlanModel(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class GpuFacts(PlanModel):
    """The GPU the plan is for: the smallest-memory one among the profile's gpu_names."""

    name: str
    label: str
    nvidia_smi_mib: int
    total_gib: float
    vendor: str
    compute_capability: float | None
    candidates: list[str]
    known: bool


class GpuBudget(PlanModel):
    """Per-GPU (per TP rank) memory budget, GiB."""

    total_gib: float
    memory_fraction: float
    memory_fraction_source: str
    budget_gib: float
    weights_gib: float
    draft_weights_gib: float
    overhead_gib: float
    kv_pool_gib: float


class Uncertainty(PlanModel):
    """The same plan with overhead at the low and high end of memory.md §5.4's band."""

    overhead_gib_low: float
    overhead_gib_high: float
    kv_pool_tokens_low: int
    kv_pool_tokens_high: int
    max_context_tokens_low: int
    max_context_tokens_high: int


class Plan(PlanModel):
    """What ``plan_profile`` concludes; also the ``plan --json`` document (shared/spec/cli.md)."""

    profile: str
    model: str
    arch: str
    quant: str
    engine: str
    image: str
    num_gpus: int
    tensor_parallel: int
    speculative: bool
    gpu: GpuFacts
    attention: Attention
    attention_reason: str
    kv_cache_dtype: str
    kv_bytes_per_token: int
    kv_bytes_per_token_total: int
    per_gpu: GpuBudget
    kv_pool_tokens: int
    model_max_context: int
    max_context_tokens: int
    context_length: int | None
    context_fits: bool
    max_concurrent_sequences: int
    fits: bool
    verdict: Verdict
    reason: str
    uncertainty: Uncertainty
    warnings: list[str]
    launch_command: str
    search_filters: dict[str, Any]


# --- engine builds ------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageTag:
    """What an image tag says about the engine build inside it."""

    tag: str
    version: tuple[int, ...] | None
    built: date | None
    repository: str = ""

    @property
    def current(self) -> bool:
        """A moving tag that tracks the newest build."""
        return self.version is None and self.built is None and self.tag.lower() in CURRENT_TAGS


_VERSION = re.compile(r"v?(\d+)\.(\d+)(?:\.(\d+))?")
_DATE = re.compile(r"(20\d\d)-?(\d\d)-?(\d\d)")


def parse_image_tag(image: str) -> ImageTag:
    """Version or build date from an image reference (``vllm/vllm-openai:v0.24.0`` -> (0, 24, 0))."""
    ref = image.split("@", 1)[0]
    name_end = ref.rfind("/")
    colon = ref.find(":", name_end + 1)
    repository, tag = (ref[:colon], ref[colon + 1 :]) if colon >= 0 else (ref, "latest")
    match = _VERSION.match(tag)
    if match:
        return ImageTag(tag, tuple(int(g) for g in match.groups() if g is not None), None, repository)
    found = _DATE.search(tag)
    if found:
        try:
            return ImageTag(tag, None, date(int(found[1]), int(found[2]), int(found[3])), repository)
        except ValueError:
            pass
    return ImageTag(tag, None, None, repository)


def _dotted(version: tuple[int, ...]) -> str:
    return ".".join(str(p) for p in version)


def detect_attention(
    kind: str,
    image: str,
    arch: ModelArch,
    *,
    profile_mla: bool | None = None,
    forced: Attention | None = None,
    env: dict[str, str] | None = None,
) -> tuple[Attention, str, list[str]]:
    """Whether the engine stores the MLA latent or full per-head K/V, why, and any warnings.

    Order: ``forced`` (``--attention``), the profile's ``engine.mla``, then the engine kind and
    image tag (memory.md §2.4, engines.md §2.7/§3.7/§4.6): vLLM >= 0.15 (PR #32759), SGLang
    >= 0.5.8 or ``dev-pr-17247``, LightLLM always (its only path for glm4_moe_lite). GQA models have
    no latent: their K/V is per KV head, reported as ``"mha"``.
    """
    if not arch.is_mla:
        if forced == "mla" or profile_mla:
            raise UsageError(f"{arch.key} uses grouped-query attention and has no MLA latent to store")
        return "mha", f"{arch.key} uses grouped-query attention ({arch.num_kv_heads} KV heads)", []
    if forced is not None:
        return forced, f"--attention {forced}", []
    if profile_mla is not None:
        return ("mla" if profile_mla else "mha"), f"the profile sets engine.mla: {str(profile_mla).lower()}", []

    parsed = parse_image_tag(image)
    unknown = [
        f"cannot tell the {kind} build from image tag '{parsed.tag}': assumed it stores the MLA latent"
        " (every release that runs this model does); use --attention mha to plan for the 17.8x larger MHA cache"
    ]
    if kind == "vllm":
        if (env or {}).get("VLLM_MLA_DISABLE", "").strip().lower() in ("1", "true", "yes"):
            return "mha", "VLLM_MLA_DISABLE is set: vLLM stores per-head K and V (engines.md §3.7)", []
        if parsed.version is not None:
            if parsed.version >= VLLM_MLA_SINCE:
                return "mla", f"vLLM {_dotted(parsed.version)} (>= 0.15) stores the MLA latent for glm4_moe_lite", []
            return (
                "mha",
                f"vLLM {_dotted(parsed.version)} predates MLA for glm4_moe_lite (added in 0.15)",
                [
                    "no vLLM release before 0.15 ships glm4_moe_lite (engines.md §0): only patched or nightly"
                    " builds of that era load the model, and they store per-head K/V"
                ],
            )
    elif kind == "sglang":
        if any(t in parsed.tag for t in SGLANG_MLA_TAGS):
            return "mla", f"SGLang image '{parsed.tag}' is the MLA build the Vast guide uses (memory.md §2.4)", []
        if parsed.version is not None:
            if parsed.version >= SGLANG_MLA_SINCE:
                return "mla", f"SGLang {_dotted(parsed.version)} (>= 0.5.8) stores the MLA latent for glm4_moe_lite", []
            return (
                "mha",
                f"SGLang {_dotted(parsed.version)} predates MLA for glm4_moe_lite (added in 0.5.8)",
                [
                    "no SGLang release before 0.5.8 ships glm4_moe_lite (engines.md §0): the image may not load the"
                    " model at all; lmsysorg/sglang:v0.5.8 or newer stores the 17.8x smaller MLA latent"
                ],
            )
    elif kind == "lightllm":
        if parsed.version is not None and parsed.version < LIGHTLLM_FLASH_SINCE:
            return (
                "mla",
                "LightLLM always stores the MLA latent for glm4_moe_lite",
                [
                    f"LightLLM {_dotted(parsed.version)} predates GLM-4.7-Flash support (first tag v1.2.0;"
                    " use :main or >= v1.2.0): the engine will not load this model"
                ],
            )
        return "mla", "LightLLM stores the MLA latent for glm4_moe_lite (engines.md §4.6)", []
    if parsed.built is not None:
        if parsed.built >= MLA_NIGHTLY_SINCE:
            return "mla", f"{kind} build of {parsed.built.isoformat()} postdates MLA support (2026-01-22)", []
        return "mha", f"{kind} build of {parsed.built.isoformat()} predates MLA support (2026-01-22)", []
    if parsed.current:
        return "mla", f"'{parsed.tag}' tracks the newest {kind}, which stores the MLA latent", []
    return "mla", f"assumed MLA for unrecognised {kind} tag '{parsed.tag}'", unknown


# --- per-token KV -------------------------------------------------------------------------


def kv_element_bytes(kind: str, kv_cache_dtype: str | None, attention: Attention) -> tuple[int, str]:
    """Bytes per stored KV element and the dtype's name.

    LightLLM has no fp8 KV for MLA models (engines.md §4.1: ``--llm_kv_type`` is ignored for
    glm4_moe_lite) and glmdeploy passes no KV dtype to it, so it is always the model dtype.
    """
    if kind == "lightllm" or kv_cache_dtype is None:
        return 2, "bf16"
    value = kv_cache_dtype.lower()
    if value.startswith("fp8"):
        return 1, "fp8"
    return 2, "bf16"


def kv_bytes_per_token(
    arch: ModelArch, attention: Attention, *, tensor_parallel: int, element_bytes: int, speculative: bool
) -> tuple[int, int]:
    """KV bytes per token: (per TP rank, model-wide as at TP1).

    MLA (memory.md §2.1): ``(kv_lora_rank + qk_rope_head_dim) x layers x b`` = 576 x 47 x b,
    54,144 B at bf16, the same on every rank (the latent is replicated, not sharded).
    MHA/GQA (memory.md §2.2, §3): ``(k_head_dim + v_head_dim) x layers x max(1, kv_heads / TP) x b``;
    962,560 B for GLM-4.7-Flash at bf16 TP1, 240,640 per rank at TP4.
    The MTP draft adds its own layer(s) of KV (memory.md §2.1, §3; engines.md §2.7).
    """
    layers = arch.num_layers + (arch.mtp_layers if speculative else 0)
    if attention == "mla":
        if arch.kv_lora_rank is None or arch.qk_rope_head_dim is None:
            raise UsageError(f"{arch.key} has no MLA latent")
        per_token = (arch.kv_lora_rank + arch.qk_rope_head_dim) * layers * element_bytes
        return per_token, per_token
    width = arch.k_head_dim + arch.v_head_dim
    per_rank = width * layers * max(1, arch.num_kv_heads // tensor_parallel) * element_bytes
    return per_rank, width * layers * arch.num_kv_heads * element_bytes


# --- weights ------------------------------------------------------------------------------


def weights_per_rank_gib(
    arch: ModelArch, checkpoint_gb: float, tensor_parallel: int, *, speculative: bool
) -> tuple[float, float]:
    """(main-model weights, MTP draft weights) on one TP rank, GiB.

    memory.md §1.2: BF16 GLM-4.7-Flash main model 55.8 GiB at TP1, 28.0 at TP2, 14.1 at TP4 —
    a small replicated part (q_a/kv_a projections, norms, routers) plus everything else split
    TP ways. Other quantisations are scaled from their checkpoint size (§1.3), whose
    ``main_fraction`` is the main model and the rest the MTP draft (+1.2-2.4 GiB at TP1 for BF16).
    """
    share = arch.replicated_fraction + (1 - arch.replicated_fraction) / tensor_parallel
    checkpoint_gib = checkpoint_gb * GB / GIB
    main = checkpoint_gib * arch.main_fraction * share
    draft = checkpoint_gib * (1 - arch.main_fraction) * share if speculative else 0.0
    return main, draft


# --- memory fraction ----------------------------------------------------------------------


def sglang_default_mem_fraction(
    gpu_mib: int,
    tensor_parallel: int,
    *,
    speculative: bool,
    chunked_prefill_size: int | None = None,
    cuda_graph_max_bs: int | None = None,
) -> float:
    """SGLang's own ``mem_fraction_static`` when none is given (memory.md §5.2 heuristic, ~v0.5.x).

    ``reserved MiB = 512 + max(chunk, 2048) x 1.5 + graph_bs x 2 + TP/8 x 1024`` (floor 10 GiB on
    GPUs over 60 GB, +2048 for EAGLE/MTP); ``mfs = (gpu_MiB - reserved) / gpu_MiB``.
    Reproduces §5.2's table (3090 TP4 0.827, H100 TP1 0.836 / 0.811 with MTP, H200 TP1 0.907).
    """
    gib = gpu_mib / 1024
    big_tp = tensor_parallel >= 4
    if gib < 20:
        chunk, graph_bs = 2048, 8
    elif gib < 35:
        chunk, graph_bs = 2048, 80 if big_tp else 24
    elif gib < 60:
        chunk, graph_bs = 4096, 160 if big_tp else 32
    elif gib < 160:
        chunk, graph_bs = 8192, 512 if big_tp else 256
    else:
        chunk, graph_bs = 16384, 512
    if chunked_prefill_size is not None:
        chunk = chunked_prefill_size
    if cuda_graph_max_bs is not None:
        graph_bs = cuda_graph_max_bs
    reserved = 512 + max(chunk, 2048) * 1.5 + graph_bs * 2 + tensor_parallel / 8 * 1024
    if gib > 60:
        reserved = max(reserved, 10 * 1024)
    if speculative:
        reserved += 2048
    return (gpu_mib - reserved) / gpu_mib


def vllm_default_utilization(tag: ImageTag) -> float:
    """vLLM's default ``gpu_memory_utilization``: 0.92 from 0.33 (and moving tags), else 0.9."""
    if tag.current or (tag.version is not None and tag.version >= VLLM_UTIL_NEW_SINCE):
        return VLLM_UTIL_NEW
    return VLLM_UTIL_OLD


def memory_fraction(profile: Profile, gpu: GpuSpec, tag: ImageTag) -> tuple[float, str]:
    """The fraction the engine will use and where it comes from (profile, or the engine default)."""
    e = profile.engine
    if e.mem_fraction is not None:
        return e.mem_fraction, "profile"
    speculative = e.speculative is not None
    if e.kind == "vllm":
        return vllm_default_utilization(tag), "vLLM default"
    if e.kind == "sglang":
        value = sglang_default_mem_fraction(
            gpu.total_mib,
            e.tensor_parallel,
            speculative=speculative,
            chunked_prefill_size=e.chunked_prefill_size,
            cuda_graph_max_bs=e.cuda_graph_max_batch,
        )
        return round(value, 3), "SGLang default heuristic"
    return LIGHTLLM_DEFAULT_MEM_FRACTION, "LightLLM default"


def _vllm_profiles_graphs(tag: ImageTag, enforce_eager: bool) -> bool:
    if enforce_eager:
        return False
    if tag.version is not None:
        return tag.version >= VLLM_GRAPH_PROFILING_SINCE
    # Unknown builds: count the graphs (the smaller, safer pool).
    return True


def engine_overhead_gib(kind: str, tag: ImageTag, *, enforce_eager: bool) -> float:
    """Central estimate of what the budget holds besides weights and KV (memory.md §5.4).

    vLLM: activations + non-torch (``A + N``) plus CUDA graphs when vLLM profiles them (default
    since v0.21, not with ``--enforce-eager``). SGLang/LightLLM: ``C'`` (context, NCCL, misc);
    their activations and graphs live outside the fraction.
    """
    if kind == "vllm":
        return VLLM_ACTIVATION_GIB + (VLLM_CUDA_GRAPH_GIB if _vllm_profiles_graphs(tag, enforce_eager) else 0.0)
    if kind == "sglang":
        return SGLANG_OVERHEAD_GIB
    return LIGHTLLM_OVERHEAD_GIB


def kv_pool_gib(fraction: float, total_gib: float, weights_gib: float, overhead_gib: float) -> float:
    """memory.md §5.4: ``KV = fraction x T - W - overhead`` (vLLM, SGLang and LightLLM alike)."""
    return fraction * total_gib - weights_gib - overhead_gib


def pool_tokens(pool_gib: float, bytes_per_token: int, *, block: int = 1) -> int:
    """Tokens the pool holds, rounded down to the engine's block size; 0 when the pool is empty."""
    if pool_gib <= 0:
        return 0
    tokens = int(pool_gib * GIB // bytes_per_token)
    return tokens - tokens % block


# --- GPU choice ---------------------------------------------------------------------------


def choose_gpu(gpu_names: list[str], min_vram_gb: float) -> tuple[GpuSpec, list[str], list[str]]:
    """The smallest-memory GPU an offer search for these names could return, and warnings.

    A variant qualifies when Vast's ``gpu_ram`` (MiB, as nvidia-smi prints) passes the search
    filter ``gpu_ram >= min_vram_gb x 1000`` (glmdeploy.vast.filters), so an A100 is planned at
    40 GB only when ``min_vram_gb`` lets 40 GB boards through.
    """
    warnings: list[str] = []
    floor_mib = round(min_vram_gb * 1000)
    candidates: list[GpuSpec] = []
    for name in gpu_names:
        variants = GPU_VARIANTS.get(name)
        if variants is None:
            warnings.append(f"no memory facts for gpu_name '{name}'; it is left out of the plan")
            continue
        candidates += [v for v in variants if v.total_mib >= floor_mib] or list(variants)
    if not candidates:
        # The search only returns boards whose gpu_ram (MiB) is at least this floor.
        assumed = GpuSpec(name=gpu_names[0], total_mib=floor_mib, label=gpu_names[0])
        warnings.append(
            f"no known GPU among {', '.join(gpu_names)}: planned with min_vram_gb {min_vram_gb:g} GB as its memory"
        )
        return assumed, warnings, []
    chosen = min(candidates, key=lambda g: g.total_mib)
    if len({g.total_mib for g in candidates}) > 1:
        warnings.append(
            f"the search can return GPUs of different sizes; planned for the smallest: {chosen.label} "
            f"({chosen.total_mib} MiB)"
        )
    return chosen, warnings, [g.label for g in candidates]


# --- the plan -----------------------------------------------------------------------------


def _fmt(n: int) -> str:
    return f"{n:,}"


def plan_profile(
    profile: Profile,
    *,
    context_length: int | None = None,
    image: str | None = None,
    attention: Attention | None = None,
) -> Plan:
    """Plan ``profile`` (optionally with another context length, image or attention layout).

    ``fits`` is False only for "does not fit"; "tight" fits at the central estimate but not at the
    pessimistic end of the overhead range (or leaves vLLM too little headroom). Raises
    ``UsageError`` for inputs that cannot be planned (bad image reference, MLA forced on a GQA model).
    """
    from glmdeploy.onstart import display_command, launch_argv
    from glmdeploy.profiles.model import with_overrides
    from glmdeploy.vast.filters import offer_query

    profile = with_overrides(profile, context_length=context_length, image=image)
    e = profile.engine
    arch = MODEL_ARCHS[profile.model.arch]
    tp = e.tensor_parallel
    speculative = e.speculative is not None
    tag = parse_image_tag(e.image)
    warnings: list[str] = []

    gpu, gpu_warnings, candidates = choose_gpu(list(profile.hardware.gpu_names), profile.hardware.min_vram_gb)
    warnings += gpu_warnings
    total_gib = gpu.total_gib - CUDA_CONTEXT_GIB

    kind = e.kind
    repository = tag.repository.lower()
    foreign = [other for other in ("vllm", "sglang", "lightllm") if other != kind and other in repository]
    if foreign and kind not in repository:
        warnings.append(
            f"image {e.image} looks like a {foreign[0]} image but the profile runs {kind}; "
            f"its tag was read as a {kind} version"
        )
    chosen_attention, attention_reason, attention_warnings = detect_attention(
        kind, e.image, arch, profile_mla=e.mla, forced=attention, env=dict(profile.env)
    )
    warnings += attention_warnings

    element, kv_dtype = kv_element_bytes(kind, e.kv_cache_dtype, chosen_attention)
    if kind == "lightllm" and e.kv_cache_dtype is not None:
        warnings.append("LightLLM stores this model's KV in the model dtype; engine.kv_cache_dtype is ignored")
    if (
        kind == "vllm"
        and chosen_attention == "mla"
        and kv_dtype == "fp8"
        and gpu.compute_capability is not None
        and gpu.compute_capability < 8.9
    ):
        warnings.append(
            f"vLLM rejects fp8 KV for MLA models below compute capability 8.9 ({gpu.label} is "
            f"{gpu.compute_capability:g}): the engine will refuse this kv_cache_dtype; planned with bf16 KV"
        )
        element, kv_dtype = 2, "bf16"
    per_rank_bytes, total_bytes = kv_bytes_per_token(
        arch, chosen_attention, tensor_parallel=tp, element_bytes=element, speculative=speculative
    )

    weights, draft = weights_per_rank_gib(arch, profile.model.weights_gb, tp, speculative=speculative)
    fraction, fraction_source = memory_fraction(profile, gpu, tag)
    overhead = engine_overhead_gib(kind, tag, enforce_eager=e.enforce_eager)
    block = VLLM_BLOCK_TOKENS if kind == "vllm" else 1

    def tokens_at(overhead_gib: float) -> int:
        return pool_tokens(kv_pool_gib(fraction, total_gib, weights + draft, overhead_gib), per_rank_bytes, block=block)

    pool_gib = kv_pool_gib(fraction, total_gib, weights + draft, overhead)
    tokens = tokens_at(overhead)
    model_max = arch.max_position_embeddings
    max_context = min(tokens, model_max)
    low_overhead, high_overhead = min(OVERHEAD_RANGE_GIB[0], overhead), max(OVERHEAD_RANGE_GIB[1], overhead)
    tokens_pessimistic, tokens_optimistic = tokens_at(high_overhead), tokens_at(low_overhead)
    uncertainty = Uncertainty(
        overhead_gib_low=low_overhead,
        overhead_gib_high=high_overhead,
        kv_pool_tokens_low=tokens_pessimistic,
        kv_pool_tokens_high=tokens_optimistic,
        max_context_tokens_low=min(tokens_pessimistic, model_max),
        max_context_tokens_high=min(tokens_optimistic, model_max),
    )

    # vLLM and LightLLM refuse to start unless the pool holds one request of the configured
    # length, which defaults to the model's maximum (memory.md §5.1, engines.md §4.4); SGLang
    # instead caps the request length at the pool (memory.md §5.2).
    requested = e.context_length
    required = requested if requested is not None else (None if kind == "sglang" else model_max)
    need = required if required is not None else 1

    verdict: Verdict
    if requested is not None and requested > model_max:
        verdict = "does not fit"
        reason = f"context {_fmt(requested)} exceeds {arch.key}'s {_fmt(model_max)} positions"
    elif pool_gib <= 0:
        verdict = "does not fit"
        reason = (
            f"weights {weights + draft:.1f} GiB + overhead {overhead:.1f} GiB per GPU exceed the engine's budget "
            f"{fraction:g} x {total_gib:.1f} GiB = {fraction * total_gib:.1f} GiB: no room for KV cache"
        )
    elif tokens < need:
        verdict = "does not fit"
        what = "the context" if requested is not None else f"{kind}'s default context (the model maximum)"
        reason = f"the KV pool holds {_fmt(tokens)} tokens but {what} needs {_fmt(need)}"
    elif tokens_pessimistic < need:
        verdict = "tight"
        reason = (
            f"fits at the estimate ({_fmt(tokens)} tokens for {_fmt(need)}), but not if overhead reaches "
            f"{high_overhead:g} GiB per GPU ({_fmt(tokens_pessimistic)} tokens)"
        )
    else:
        verdict = "fits"
        reason = (
            f"the KV pool holds {_fmt(tokens)} tokens ({_fmt(tokens_pessimistic)} at {high_overhead:g} GiB overhead)"
            + (f", enough for {_fmt(need)}" if required is not None else "")
        )

    if kind == "vllm" and verdict != "does not fit":
        # memory.md §5.1: CUDA context, unprofiled graphs and the sampler warm-up must fit in (1 - util) x T.
        seqs = e.max_running_requests or VLLM_DEFAULT_MAX_NUM_SEQS
        sampler = seqs * arch.vocab_size * SAMPLER_BYTES_PER_LOGIT / GIB
        graphs = 0.0 if e.enforce_eager or _vllm_profiles_graphs(tag, e.enforce_eager) else VLLM_CUDA_GRAPH_GIB
        headroom = (1 - fraction) * total_gib
        needed = VLLM_CONTEXT_GIB + sampler + graphs
        if headroom < needed:
            warnings.append(
                f"only {headroom:.2f} GiB per GPU stays outside gpu_memory_utilization {fraction:g}; the CUDA context, "
                f"{'CUDA graphs, ' if graphs else ''}and the sampler warm-up for {seqs} sequences need about "
                f"{needed:.2f} GiB (memory.md §5.1, vLLM issue #33920)"
            )
            if verdict == "fits":
                verdict = "tight"
                reason = f"{reason}; but vLLM's headroom outside the budget is short"
    if kind == "sglang" and e.mem_fraction is not None:
        default = sglang_default_mem_fraction(
            gpu.total_mib,
            tp,
            speculative=speculative,
            chunked_prefill_size=e.chunked_prefill_size,
            cuda_graph_max_bs=e.cuda_graph_max_batch,
        )
        if e.mem_fraction > default + 0.005:
            warnings.append(
                f"mem_fraction {e.mem_fraction:g} is above SGLang's own default {default:.3f} for {gpu.label}: "
                f"{(1 - e.mem_fraction) * total_gib:.1f} GiB per GPU is left for activations and CUDA graphs "
                f"where SGLang would keep {(1 - default) * total_gib:.1f} GiB"
            )

    context_fits = verdict != "does not fit" and (requested is None or tokens >= requested)
    per_sequence = requested if requested is not None else max_context
    concurrent = tokens // per_sequence if per_sequence > 0 and context_fits else 0

    warnings += list(profile.warnings)
    return Plan(
        profile=profile.name,
        model=profile.model.repo,
        arch=arch.key,
        quant=profile.model.quant,
        engine=kind,
        image=e.image,
        num_gpus=profile.hardware.num_gpus,
        tensor_parallel=tp,
        speculative=speculative,
        gpu=GpuFacts(
            name=gpu.name,
            label=gpu.label,
            nvidia_smi_mib=gpu.total_mib,
            total_gib=round(total_gib, 3),
            vendor=gpu.vendor,
            compute_capability=gpu.compute_capability,
            candidates=candidates,
            known=bool(candidates),
        ),
        attention=chosen_attention,
        attention_reason=attention_reason,
        kv_cache_dtype=kv_dtype,
        kv_bytes_per_token=per_rank_bytes,
        kv_bytes_per_token_total=total_bytes,
        per_gpu=GpuBudget(
            total_gib=round(total_gib, 3),
            memory_fraction=fraction,
            memory_fraction_source=fraction_source,
            budget_gib=round(fraction * total_gib, 3),
            weights_gib=round(weights + draft, 3),
            draft_weights_gib=round(draft, 3),
            overhead_gib=overhead,
            kv_pool_gib=round(pool_gib, 3),
        ),
        kv_pool_tokens=tokens,
        model_max_context=model_max,
        max_context_tokens=max_context,
        context_length=requested,
        context_fits=context_fits,
        max_concurrent_sequences=concurrent,
        fits=verdict != "does not fit",
        verdict=verdict,
        reason=reason,
        uncertainty=uncertainty,
        warnings=warnings,
        launch_command=display_command(launch_argv(profile)),
        search_filters=offer_query(profile.hardware),
    )
