"""How an engine budgets GPU memory: the shared terms, and the interface each engine implements.

Pure data and arithmetic, no I/O. Each engine's accounting lives next to it
(``vllm_memory``, ``sglang_memory``, ``lightllm_memory``) and cites the engine source it models;
the planner (``glmdeploy.planner``) only combines them and never asks which engine it has.

Every engine ends up with the same shape, per GPU (TP rank)::

    KV pool = fraction x T - sum(terms)

where ``T`` is the CUDA-visible total (what ``cudaMemGetInfo`` reports), ``fraction`` the engine's
memory knob (vLLM ``gpu_memory_utilization``, SGLang ``mem_fraction_static``, LightLLM
``mem_fraction``) and each term a reservation the engine subtracts before sizing the pool
(weights, the profile run's activation peak, CUDA graphs, ...). Each term carries a low and a
high value; the band of the pool is the sum of the terms' extremes, so it is as wide as the
terms that are actually uncertain and no wider.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import date
from typing import TYPE_CHECKING, Literal

from glmdeploy.catalog import GpuSpec, ModelArch, WeightsPerRank

if TYPE_CHECKING:
    from collections.abc import Mapping

GIB = 2**30
Attention = Literal["mla", "mha"]
SettingValue = int | float | str | bool | None

CURRENT_TAGS = ("latest", "nightly", "main", "dev")
# memory.md §6 "Era": nightlies built before 2026-01-22 store per-head K/V for glm4_moe_lite.
MLA_NIGHTLY_SINCE = date(2026, 1, 22)


# --- image tags ---------------------------------------------------------------------------


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

    def at_least(self, version: tuple[int, ...], *, unknown: bool = True) -> bool:
        """Whether the build is ``version`` or newer; moving and unreadable tags count as ``unknown``."""
        if self.version is not None:
            return self.version >= version
        return unknown


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


def dotted(version: tuple[int, ...]) -> str:
    return ".".join(str(p) for p in version)


# --- terms and results --------------------------------------------------------------------


@dataclass(frozen=True)
class MemoryTerm:
    """One reservation the engine subtracts from its budget before sizing the KV pool, GiB per GPU."""

    name: str
    gib: float
    low_gib: float
    high_gib: float
    source: str

    def as_dict(self) -> dict[str, float | str]:
        return {
            "name": self.name,
            "gib": round(self.gib, 4),
            "low_gib": round(self.low_gib, 4),
            "high_gib": round(self.high_gib, 4),
            "source": self.source,
        }


def term(name: str, gib: float, low: float, high: float, source: str) -> MemoryTerm:
    """A term whose band always contains its central value."""
    return MemoryTerm(name, gib, min(low, gib), max(high, gib), source)


@dataclass(frozen=True)
class MemorySetup:
    """Everything an engine's memory accounting depends on, as the planner knows it before renting."""

    arch: ModelArch
    gpu: GpuSpec
    total_gib: float  # CUDA-visible total per GPU
    tag: ImageTag
    tensor_parallel: int
    weights: WeightsPerRank
    kv_bytes_per_token: int  # per rank, all layers (incl. the MTP layer when speculative)
    attention: Attention
    context_length: int | None  # the engine's max model length; None = the engine's default
    mem_fraction: float | None = None  # None: the engine's default
    enforce_eager: bool = False
    max_num_seqs: int | None = None
    max_num_batched_tokens: int | None = None  # vLLM --max-num-batched-tokens / chunked prefill size
    cuda_graph_max_batch: int | None = None
    speculative_tokens: int = 0  # 0: no speculative decoding
    env: Mapping[str, str] = field(default_factory=dict)

    @property
    def speculative(self) -> bool:
        return self.speculative_tokens > 0


@dataclass(frozen=True)
class MemoryEstimate:
    """An engine's budget for one GPU: the fraction, the terms it subtracts, and how it rounds."""

    fraction: float
    fraction_source: str
    total_gib: float
    terms: tuple[MemoryTerm, ...]
    block_size: int  # the pool is a whole number of these (tokens)
    settings: dict[str, SettingValue]  # the engine's resolved defaults the terms depend on
    warnings: tuple[str, ...] = ()

    @property
    def budget_gib(self) -> float:
        return self.fraction * self.total_gib

    def term_gib(self, name: str) -> float:
        return sum(t.gib for t in self.terms if t.name == name)

    @property
    def weights_gib(self) -> float:
        return self.term_gib("weights")

    @property
    def overhead_terms(self) -> tuple[MemoryTerm, ...]:
        return tuple(t for t in self.terms if t.name != "weights")

    @property
    def overhead_gib(self) -> float:
        return sum(t.gib for t in self.overhead_terms)

    @property
    def overhead_low_gib(self) -> float:
        return sum(t.low_gib for t in self.overhead_terms)

    @property
    def overhead_high_gib(self) -> float:
        return sum(t.high_gib for t in self.overhead_terms)

    def kv_pool_gib(self, which: Literal["central", "low", "high"] = "central") -> float:
        """The pool: central, or the band's ends (``low`` takes every term at its high end)."""
        if which == "low":
            return self.budget_gib - sum(t.high_gib for t in self.terms)
        if which == "high":
            return self.budget_gib - sum(t.low_gib for t in self.terms)
        return self.budget_gib - sum(t.gib for t in self.terms)

    def tokens(self, bytes_per_token: int, which: Literal["central", "low", "high"] = "central") -> int:
        return pool_tokens(self.kv_pool_gib(which), bytes_per_token, block=self.block_size)


def pool_tokens(pool_gib: float, bytes_per_token: int, *, block: int = 1) -> int:
    """Tokens a pool holds in whole blocks of ``block`` tokens; 0 when the pool is empty.

    vLLM: ``num_blocks = available // page_size // num_layers`` with ``page_size = block_size x
    576 x dtype`` per MLA layer (vllm/v1/core/kv_cache_utils.py ``get_num_blocks``), i.e. the pool
    divided by one block's bytes over all layers, rounded down.
    """
    if pool_gib <= 0:
        return 0
    blocks = int(pool_gib * GIB) // (bytes_per_token * block)
    return blocks * block


# --- the interface each engine implements -------------------------------------------------


class MemoryModel:
    """One engine's memory semantics. Subclasses cite the engine source of every formula."""

    kind: str = ""
    label: str = ""  # how the engine is named in messages
    # Whether the engine refuses to start when the pool cannot hold one request of the configured
    # context (vLLM, LightLLM) rather than capping the request length at the pool (SGLang).
    refuses_short_pool: bool = True
    # Whether the engine has a KV dtype knob for this model at all.
    honours_kv_cache_dtype: bool = True

    def attention_for_tag(
        self, tag: ImageTag, arch: ModelArch, env: Mapping[str, str]
    ) -> tuple[Attention, str, list[str]] | None:
        """MLA vs MHA from the image's version, or None when the tag says nothing about it."""
        return None

    def kv_element_bytes(
        self, kv_cache_dtype: str | None, attention: Attention, gpu: GpuSpec
    ) -> tuple[int, str, list[str]]:
        """Bytes per stored KV element, the dtype's name and any warnings."""
        if kv_cache_dtype is None:
            return 2, "bf16", []
        if not self.honours_kv_cache_dtype:
            return (
                2,
                "bf16",
                [f"{self.label} stores this model's KV in the model dtype; engine.kv_cache_dtype is ignored"],
            )
        if kv_cache_dtype.lower().startswith("fp8"):
            return 1, "fp8", []
        return 2, "bf16", []

    def estimate(self, setup: MemorySetup) -> MemoryEstimate:
        raise NotImplementedError

    def default_context(self, arch: ModelArch) -> int | None:
        """The request length the engine configures when none is given (None: capped at the pool)."""
        return arch.max_position_embeddings if self.refuses_short_pool else None

    def reported_lines(
        self, setup: MemorySetup, estimate: MemoryEstimate, tokens: int, context_length: int
    ) -> list[str]:
        """The startup log lines in which the engine states its KV capacity, with these numbers."""
        raise NotImplementedError

    def max_model_len_accepted(self, tokens: int, model_max: int) -> int:
        """The longest request the engine will accept with this pool."""
        return min(tokens, model_max)

    def extra_warnings(self, setup: MemorySetup, estimate: MemoryEstimate) -> list[str]:
        """Engine-specific advice beyond the pool itself (e.g. headroom outside the budget)."""
        return []


def memory_model(kind: str) -> MemoryModel:
    """The memory model of engine ``kind`` (imported lazily: ``--help`` stays fast)."""
    if kind == "vllm":
        from glmdeploy.engines.vllm_memory import VllmMemory

        return VllmMemory()
    if kind == "sglang":
        from glmdeploy.engines.sglang_memory import SGLangMemory

        return SGLangMemory()
    if kind == "lightllm":
        from glmdeploy.engines.lightllm_memory import LightLLMMemory

        return LightLLMMemory()
    raise KeyError(kind)


def mla_by_date(tag: ImageTag, label: str) -> tuple[Attention, str, list[str]] | None:
    """Shared rule for dated nightlies and moving tags (memory.md §6 "Era")."""
    if tag.built is not None:
        if tag.built >= MLA_NIGHTLY_SINCE:
            return "mla", f"{label} build of {tag.built.isoformat()} postdates MLA support (2026-01-22)", []
        return "mha", f"{label} build of {tag.built.isoformat()} predates MLA support (2026-01-22)", []
    if tag.current:
        return "mla", f"'{tag.tag}' tracks the newest {label}, which stores the MLA latent", []
    return None
