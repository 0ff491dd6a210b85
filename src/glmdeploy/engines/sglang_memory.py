"""SGLang's memory accounting as pure functions.

Sources (sgl-project/sglang):
- ``python/sglang/srt/model_executor/model_runner_kv_cache_mixin.py`` @
  226149ac457bd1a1b5d450f55c01f72f604320d6, ``profile_max_num_token``:
  ``rest = post_model_load_free - pre_model_load_free x (1 - mem_fraction_static)``,
  ``max_total_num_tokens = rest // cell_size`` with ``cell_size = (kv_lora_rank + qk_rope_head_dim)
  x layers x element`` for the MLA backend (no TP division); the draft worker of EAGLE/MTP sizes its
  pool with ``num_nextn_predict_layers`` layers for the same token count.
  With ``pre_free = T - C'`` (CUDA context, NCCL, anything allocated before the weights) and
  ``post_free = pre_free - W`` that is ``KV = mfs x (T - C') - W``. Older builds multiplied the
  total instead of the pre-load free memory (``rest = avail - total x (1 - mfs)``, memory.md §5.2),
  which differs by ``(1 - mfs) x C'`` (about 0.1 GiB), inside the band.
- ``python/sglang/srt/server_args.py`` @ 469c63e54e7d94591617ef9590c6aa26d54dc1bb,
  ``_handle_gpu_memory_settings``: the default ``mem_fraction_static`` reserves ``512 +
  max(chunked_prefill_size, 2048) x 1.5 + cuda_graph_max_bs x 2 + TP x PP / 8 x 1024`` MiB (floor
  10 GiB above 60 GB, +2048 with EAGLE/MTP, +6144 STANDALONE, +8 per piecewise graph size with
  ``--enable-piecewise-cuda-graph``; rounded to 3 decimals) for activations, CUDA graphs and the
  scheduler's request-to-token table, all of which live outside the fraction. The GPU buckets for
  ``chunked_prefill_size`` / ``cuda_graph_max_bs`` are the same function's.
- The KV capacity lines: ``KV Cache is allocated. #tokens: N, KV size: X GB`` and
  ``max_total_num_tokens=N, ...`` (engines.md §2.4). A request is capped at
  ``min(context_len - 1, max_total_num_tokens - 1)`` instead of refusing to start.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from glmdeploy.engines.memory import (
    GIB,
    Attention,
    ImageTag,
    MemoryEstimate,
    MemoryModel,
    MemorySetup,
    dotted,
    mla_by_date,
    term,
)

if TYPE_CHECKING:
    from collections.abc import Mapping

    from glmdeploy.catalog import ModelArch

MLA_SINCE = (0, 5, 8)
MLA_TAGS = ("dev-pr-17247",)  # the Vast guide's MLA build (memory.md §2.4)
# C': CUDA context, NCCL and misc allocated before the weights (memory.md §5.4: 0.5-1.5 GiB).
PRE_LOAD_GIB = (0.8, 0.5, 1.5)


def default_buckets(gpu_mib: int, tensor_parallel: int) -> tuple[int, int]:
    """(chunked_prefill_size, cuda_graph_max_bs) SGLang picks for this GPU (server_args.py)."""
    gib = gpu_mib / 1024
    big_tp = tensor_parallel >= 4
    if gib < 20:
        return 2048, 8
    if gib < 35:
        return 2048, 80 if big_tp else 24
    if gib < 60:
        return 4096, 160 if big_tp else 32
    if gib < 160:
        return 8192, 512 if big_tp else 256
    return 16384, 512


def default_mem_fraction(
    gpu_mib: int,
    tensor_parallel: int,
    *,
    speculative: bool,
    chunked_prefill_size: int | None = None,
    cuda_graph_max_bs: int | None = None,
) -> float:
    """SGLang's own ``mem_fraction_static`` when none is given (memory.md §5.2 heuristic, ~v0.5.x).

    Reproduces §5.2's table (3090 TP4 0.827, H100 TP1 0.836 / 0.811 with MTP, H200 TP1 0.907).
    """
    chunk, graph_bs = default_buckets(gpu_mib, tensor_parallel)
    if chunked_prefill_size is not None:
        chunk = chunked_prefill_size
    if cuda_graph_max_bs is not None:
        graph_bs = cuda_graph_max_bs
    reserved = 512 + max(chunk, 2048) * 1.5 + graph_bs * 2 + tensor_parallel / 8 * 1024
    if gpu_mib / 1024 > 60:
        reserved = max(reserved, 10 * 1024)
    if speculative:
        reserved += 2048
    return (gpu_mib - reserved) / gpu_mib


class SGLangMemory(MemoryModel):
    kind = "sglang"
    label = "SGLang"
    refuses_short_pool = False

    def attention_for_tag(
        self, tag: ImageTag, arch: ModelArch, env: Mapping[str, str]
    ) -> tuple[Attention, str, list[str]] | None:
        if any(t in tag.tag for t in MLA_TAGS):
            return "mla", f"SGLang image '{tag.tag}' is the MLA build the Vast guide uses (memory.md §2.4)", []
        if tag.version is not None:
            if tag.version >= MLA_SINCE:
                return "mla", f"SGLang {dotted(tag.version)} (>= 0.5.8) stores the MLA latent for glm4_moe_lite", []
            return (
                "mha",
                f"SGLang {dotted(tag.version)} predates MLA for glm4_moe_lite (added in 0.5.8)",
                [
                    "no SGLang release before 0.5.8 ships glm4_moe_lite (engines.md §0): the image may not load the"
                    " model at all; lmsysorg/sglang:v0.5.8 or newer stores the 17.8x smaller MLA latent"
                ],
            )
        return mla_by_date(tag, "sglang")

    def _default(self, setup: MemorySetup) -> float:
        return default_mem_fraction(
            setup.gpu.total_mib,
            setup.tensor_parallel,
            speculative=setup.speculative,
            chunked_prefill_size=setup.max_num_batched_tokens,
            cuda_graph_max_bs=setup.cuda_graph_max_batch,
        )

    def estimate(self, setup: MemorySetup) -> MemoryEstimate:
        if setup.mem_fraction is not None:
            fraction, source = setup.mem_fraction, "profile"
        else:
            fraction, source = round(self._default(setup), 3), "SGLang default heuristic"
        chunk, graph_bs = default_buckets(setup.gpu.total_mib, setup.tensor_parallel)
        w = setup.weights
        pre = [fraction * v for v in PRE_LOAD_GIB]
        terms = (
            term(
                "weights",
                w.total_gib,
                w.total_gib * (1 - w.relative_band),
                w.total_gib * (1 + w.relative_band),
                f"weights ({w.method}) {w.main_gib:.2f} GiB"
                + (f" + MTP draft {w.draft_gib:.2f} GiB" if w.draft_gib else ""),
            ),
            term(
                "pre_load_usage",
                pre[0],
                pre[1],
                pre[2],
                "mem_fraction_static x C' (CUDA context, NCCL before the weights; model_runner_kv_cache_mixin.py)",
            ),
        )
        settings: dict[str, int | float | str | bool | None] = {
            "mem_fraction_static": fraction,
            "chunked_prefill_size": setup.max_num_batched_tokens or chunk,
            "cuda_graph_max_bs": setup.cuda_graph_max_batch or graph_bs,
            "page_size": 1,
            "context_len": setup.context_length or setup.arch.max_position_embeddings,
        }
        return MemoryEstimate(fraction, source, setup.total_gib, terms, 1, settings)

    def max_model_len_accepted(self, tokens: int, model_max: int) -> int:
        return max(0, min(tokens, model_max) - 1)

    def reported_lines(
        self, setup: MemorySetup, estimate: MemoryEstimate, tokens: int, context_length: int
    ) -> list[str]:
        if tokens <= 0:
            # model_runner.py (engines.md §2.4) refuses an empty pool.
            return [
                "RuntimeError: Not enough memory. Please try to increase --mem-fraction-static. "
                f"Current value: self.server_args.mem_fraction_static={estimate.fraction:g}"
            ]
        kv_gb = tokens * setup.kv_bytes_per_token / GIB
        return [
            f"KV Cache is allocated. #tokens: {tokens}, KV size: {kv_gb:.2f} GB",
            f"max_total_num_tokens={tokens}, chunked_prefill_size={estimate.settings['chunked_prefill_size']}",
        ]

    def extra_warnings(self, setup: MemorySetup, estimate: MemoryEstimate) -> list[str]:
        if setup.mem_fraction is None:
            return []
        default = self._default(setup)
        if setup.mem_fraction <= default + 0.005:
            return []
        total = estimate.total_gib
        return [
            f"mem_fraction {setup.mem_fraction:g} is above SGLang's own default {default:.3f} for {setup.gpu.label}: "
            f"{(1 - setup.mem_fraction) * total:.1f} GiB per GPU is left for activations and CUDA graphs "
            f"where SGLang would keep {(1 - default) * total:.1f} GiB"
        ]
