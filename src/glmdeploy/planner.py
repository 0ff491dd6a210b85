"""Will a profile's model fit its GPUs, and with how much context? (issues 2 and 11)

Pure arithmetic on a ``Profile``, the model and GPU facts in ``glmdeploy.catalog`` and each
engine's memory semantics in ``glmdeploy.engines.memory`` (one module per engine, each formula
citing the engine source); no I/O, and no branching on the engine kind here. Per GPU::

    KV pool = fraction x T - sum(terms)

``T`` is the CUDA-visible total, ``fraction`` the engine's memory knob and the terms what the
engine reserves before sizing the pool (weights from the config, the profile run's activations,
the sampler warm-up, CUDA graphs, ...). The pool in tokens is ``KV pool / KV bytes per token``,
rounded to the engine's block size. The band (``uncertainty``) takes every term at its low and
its high end. docs/planner.md explains each term and its source.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict

from glmdeploy.catalog import GIB, GPU_VARIANTS, MODEL_ARCHS, GpuSpec, ModelArch, WeightsPerRank, weights_per_rank
from glmdeploy.engines.memory import (
    ImageTag,
    MemorySetup,
    parse_image_tag,
    pool_tokens,
)
from glmdeploy.engines.sglang_memory import default_mem_fraction as sglang_default_mem_fraction
from glmdeploy.errors import UsageError

if TYPE_CHECKING:
    from glmdeploy.engines.memory import MemoryModel
    from glmdeploy.profiles.model import Profile

Attention = Literal["mla", "mha"]
Verdict = Literal["fits", "tight", "does not fit"]

GB = 10**9

__all__ = [
    "GIB",
    "ImageTag",
    "Plan",
    "parse_image_tag",
    "plan_profile",
    "pool_tokens",
    "sglang_default_mem_fraction",
    "weights_per_rank_gib",
]


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
    weights_method: str
    overhead_gib: float
    kv_pool_gib: float


class MemoryTermOut(PlanModel):
    """One reservation the engine makes before sizing the pool, with its band and its source."""

    name: str
    gib: float
    low_gib: float
    high_gib: float
    source: str


class Uncertainty(PlanModel):
    """The plan with every uncertain term at its low and at its high end (no fixed margin)."""

    overhead_gib_low: float
    overhead_gib_high: float
    kv_pool_gib_low: float
    kv_pool_gib_high: float
    kv_pool_tokens_low: int
    kv_pool_tokens_high: int
    max_context_tokens_low: int
    max_context_tokens_high: int
    terms: list[str]


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
    memory_terms: list[MemoryTermOut]
    engine_settings: dict[str, Any]
    block_size: int
    engine_reported: list[str]
    max_model_len_accepted: int
    warnings: list[str]
    launch_command: str
    search_filters: dict[str, Any]




# --- per-token KV -------------------------------------------------------------------------


def detect_attention(
    model: MemoryModel,
    image: str,
    arch: ModelArch,
    *,
    profile_mla: bool | None = None,
    forced: Attention | None = None,
    env: dict[str, str] | None = None,
) -> tuple[Attention, str, list[str]]:
    """Whether the engine stores the MLA latent or full per-head K/V, why, and any warnings.

    Order: ``forced`` (``--attention``), the profile's ``engine.mla``, then the engine's own rule
    for the image tag (``MemoryModel.attention_for_tag``: vLLM >= 0.15, SGLang >= 0.5.8 or
    ``dev-pr-17247``, LightLLM always; memory.md §2.4). GQA models have no latent: their K/V is
    per KV head, reported as ``"mha"``.
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
    found = model.attention_for_tag(parsed, arch, env or {})
    if found is not None:
        return found
    return (
        "mla",
        f"assumed MLA for unrecognised {model.kind} tag '{parsed.tag}'",
        [
            f"cannot tell the {model.kind} build from image tag '{parsed.tag}': assumed it stores the MLA latent"
            " (every release that runs this model does); use --attention mha to plan for the 17.8x larger MHA cache"
        ],
    )


def kv_bytes_per_token(
    arch: ModelArch, attention: Attention, *, tensor_parallel: int, element_bytes: int, speculative: bool
) -> tuple[int, int]:
    """KV bytes per token: (per TP rank, model-wide as at TP1).

    MLA (memory.md §2.1): ``(kv_lora_rank + qk_rope_head_dim) x layers x b`` = 576 x 47 x b,
    54,144 B at bf16, the same on every rank (the latent is replicated, not sharded) — the real
    vLLM 0.24.0 run confirmed it exactly (67.19 GiB / 1,332,528 tokens).
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
    """(main-model weights, MTP draft weights) on one TP rank scaled from the checkpoint size, GiB.

    The fallback for models whose shapes the catalogue does not hold (``catalog.weights_per_rank``
    computes the others from the config). memory.md §1.2: a small replicated part plus everything
    else split TP ways; ``main_fraction`` of the checkpoint is the main model, the rest the MTP draft.
    """
    share = arch.replicated_fraction + (1 - arch.replicated_fraction) / tensor_parallel
    checkpoint_gib = checkpoint_gb * GB / GIB
    main = checkpoint_gib * arch.main_fraction * share
    draft = checkpoint_gib * (1 - arch.main_fraction) * share if speculative else 0.0
    return main, draft


def rank_weights(
    arch: ModelArch, quant: str, checkpoint_gb: float, tensor_parallel: int, *, speculative: bool
) -> WeightsPerRank:
    """From the config when the catalogue has the shapes, else from the checkpoint size (±5%)."""
    computed = weights_per_rank(arch, quant, tensor_parallel, speculative=speculative)
    if computed is not None:
        return computed
    main, draft = weights_per_rank_gib(arch, checkpoint_gb, tensor_parallel, speculative=speculative)
    return WeightsPerRank(main, draft, "checkpoint", 0.05)


# --- GPU choice ---------------------------------------------------------------------------


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
    pessimistic end of the band (or leaves the engine too little headroom). Raises
    ``UsageError`` for inputs that cannot be planned (bad image reference, MLA forced on a GQA model).
    """
    from glmdeploy.engines import ENGINES, get_engine
    from glmdeploy.onstart import display_command, launch_argv
    from glmdeploy.profiles.model import with_overrides
    from glmdeploy.vast.filters import offer_query

    profile = with_overrides(profile, context_length=context_length, image=image)
    e = profile.engine
    arch = MODEL_ARCHS[profile.model.arch]
    tp = e.tensor_parallel
    speculative = e.speculative is not None
    tag = parse_image_tag(e.image)
    model = get_engine(e.kind).memory()
    warnings: list[str] = []

    gpu, gpu_warnings, candidates = choose_gpu(list(profile.hardware.gpu_names), profile.hardware.min_vram_gb)
    warnings += gpu_warnings
    total_gib = gpu.cuda_visible_gib

    kind = e.kind
    repository = tag.repository.lower()
    foreign = [other for other in ENGINES if other != kind and other in repository]
    if foreign and kind not in repository:
        warnings.append(
            f"image {e.image} looks like a {foreign[0]} image but the profile runs {kind}; "
            f"its tag was read as a {kind} version"
        )
    chosen_attention, attention_reason, attention_warnings = detect_attention(
        model, e.image, arch, profile_mla=e.mla, forced=attention, env=dict(profile.env)
    )
    warnings += attention_warnings
    element, kv_dtype, kv_warnings = model.kv_element_bytes(e.kv_cache_dtype, chosen_attention, gpu)
    warnings += kv_warnings
    per_rank_bytes, total_bytes = kv_bytes_per_token(
        arch, chosen_attention, tensor_parallel=tp, element_bytes=element, speculative=speculative
    )
    weights = rank_weights(arch, profile.model.quant, profile.model.weights_gb, tp, speculative=speculative)
    setup = MemorySetup(
        arch=arch,
        gpu=gpu,
        total_gib=total_gib,
        tag=tag,
        tensor_parallel=tp,
        weights=weights,
        kv_bytes_per_token=per_rank_bytes,
        attention=chosen_attention,
        context_length=e.context_length,
        mem_fraction=e.mem_fraction,
        enforce_eager=e.enforce_eager,
        max_num_seqs=e.max_running_requests,
        max_num_batched_tokens=e.chunked_prefill_size,
        cuda_graph_max_batch=e.cuda_graph_max_batch,
        speculative_tokens=e.speculative.num_tokens if e.speculative is not None else 0,
        env=dict(profile.env),
    )
    estimate = model.estimate(setup)
    fraction = estimate.fraction
    pool_gib = estimate.kv_pool_gib()
    tokens = estimate.tokens(per_rank_bytes)
    tokens_pessimistic = estimate.tokens(per_rank_bytes, "low")
    tokens_optimistic = estimate.tokens(per_rank_bytes, "high")
    overhead = estimate.overhead_gib
    model_max = arch.max_position_embeddings
    max_context = min(tokens, model_max)
    uncertain = [t.name for t in estimate.terms if t.high_gib - t.low_gib > 1e-9]
    uncertainty = Uncertainty(
        overhead_gib_low=round(estimate.overhead_low_gib, 3),
        overhead_gib_high=round(estimate.overhead_high_gib, 3),
        kv_pool_gib_low=round(estimate.kv_pool_gib("low"), 3),
        kv_pool_gib_high=round(estimate.kv_pool_gib("high"), 3),
        kv_pool_tokens_low=tokens_pessimistic,
        kv_pool_tokens_high=tokens_optimistic,
        max_context_tokens_low=min(tokens_pessimistic, model_max),
        max_context_tokens_high=min(tokens_optimistic, model_max),
        terms=uncertain,
    )

    # vLLM and LightLLM refuse to start unless the pool holds one request of the configured
    # length, which defaults to the model's maximum (memory.md §5.1, engines.md §4.4); SGLang
    # instead caps the request length at the pool (memory.md §5.2).
    requested = e.context_length
    required = requested if requested is not None else model.default_context(arch)
    need = required if required is not None else 1
    weights_gib = weights.total_gib

    verdict: Verdict
    if requested is not None and requested > model_max:
        verdict = "does not fit"
        reason = f"context {_fmt(requested)} exceeds {arch.key}'s {_fmt(model_max)} positions"
    elif pool_gib <= 0:
        verdict = "does not fit"
        reason = (
            f"weights {weights_gib:.1f} GiB + overhead {overhead:.1f} GiB per GPU exceed the engine's budget "
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
            f"{estimate.overhead_high_gib:.2f} GiB per GPU ({_fmt(tokens_pessimistic)} tokens)"
        )
    else:
        verdict = "fits"
        reason = (
            f"the KV pool holds {_fmt(tokens)} tokens ({_fmt(tokens_pessimistic)} at the pessimistic end of the band)"
            + (f", enough for {_fmt(need)}" if required is not None else "")
        )

    if verdict != "does not fit":
        extra = model.extra_warnings(setup, estimate)
        warnings += extra
        if extra and verdict == "fits" and model.refuses_short_pool:
            verdict = "tight"
            reason = f"{reason}; but the engine's headroom outside the budget is short"

    context_fits = verdict != "does not fit" and (requested is None or tokens >= requested)
    per_sequence = requested if requested is not None else max_context
    concurrent = tokens // per_sequence if per_sequence > 0 and context_fits else 0
    reported_context = requested if requested is not None else model_max

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
            memory_fraction_source=estimate.fraction_source,
            budget_gib=round(estimate.budget_gib, 3),
            weights_gib=round(weights_gib, 3),
            draft_weights_gib=round(weights.draft_gib, 3),
            weights_method=weights.method,
            overhead_gib=round(overhead, 3),
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
        memory_terms=[MemoryTermOut.model_validate(t.as_dict()) for t in estimate.terms],
        engine_settings=dict(estimate.settings),
        block_size=estimate.block_size,
        engine_reported=model.reported_lines(setup, estimate, tokens, reported_context),
        max_model_len_accepted=model.max_model_len_accepted(tokens, model_max),
        warnings=warnings,
        launch_command=display_command(launch_argv(profile)),
        search_filters=offer_query(profile.hardware),
    )
