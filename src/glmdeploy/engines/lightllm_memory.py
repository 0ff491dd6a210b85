"""LightLLM's memory accounting as pure functions.

Sources (ModelTC/lightllm):
- ``lightllm/common/mem_manager.py`` @ d35290270695884c131c8d961ac0eea0c1fbf77c, ``profile_size``:
  ``available = get_available_gpu_memory(after the weights) - total x (1 - mem_fraction)``,
  ``size = available / cell_size``, all-reduced with MIN across ranks; for glm4_moe_lite the
  ``Deepseek2MemoryManager`` cell is ``1 x 576 x layers x element`` (memory.md §2.1). With
  ``available_after = T - C' - W`` that is ``KV = mem_fraction x T - W - C'``.
- ``lightllm/server/api_cli.py`` (engines.md §4.1, L154-170): ``--mem_fraction`` default 0.8;
  ``--graph_max_batch_size`` (256) graphs are captured after the pool, in the ``1 - mem_fraction``
  headroom, as are the prefill activations of ``--batch_max_tokens``.
- ``lightllm/common/basemodel/cuda_graph.py`` @ 0050de52aa69343846fb624fef955741ea73bee3
  ``CudaGraph.warmup``: after the pool exists, one decode graph per batch size from
  ``graph_max_batch_size`` down to 1, in a shared pool. That memory comes out of the
  ``1 - mem_fraction`` headroom, never out of the pool, so the graph batch changes whether the
  start survives, not the pool size; no per-graph figure is recorded, so it is not estimated.
- Startup line: ``N is the profiled max_total_token_num with the mem_fraction F`` (engines.md §4.4);
  a pool shorter than ``--max_req_total_len`` fails with ``check max len infer fail``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from glmdeploy.engines.memory import (
    Attention,
    ImageTag,
    MemoryEstimate,
    MemoryModel,
    MemorySetup,
    dotted,
    term,
)

if TYPE_CHECKING:
    from collections.abc import Mapping

    from glmdeploy.catalog import ModelArch

# engines.md §4.1 read api_cli.py at HEAD and its startup log ("... with the mem_fraction 0.8");
# memory.md §5.3 says 0.9 from an older reading: 0.8 is both the newer source and the safer pool.
DEFAULT_MEM_FRACTION = 0.8
FLASH_SINCE = (1, 2)  # first tag with glm4_moe_lite
# C': CUDA context, NCCL, misc before profiling (memory.md §5.5 H200 example: 1.0; §5.4: 0.5-1.5).
PRE_PROFILE_GIB = (1.0, 0.5, 1.5)
DEFAULT_GRAPH_MAX_BATCH = 256


class LightLLMMemory(MemoryModel):
    kind = "lightllm"
    label = "LightLLM"
    refuses_short_pool = True
    honours_kv_cache_dtype = False  # --llm_kv_type is ignored for glm4_moe_lite (engines.md §4.1)

    def attention_for_tag(
        self, tag: ImageTag, arch: ModelArch, env: Mapping[str, str]
    ) -> tuple[Attention, str, list[str]] | None:
        if tag.version is not None and tag.version < FLASH_SINCE:
            return (
                "mla",
                "LightLLM always stores the MLA latent for glm4_moe_lite",
                [
                    f"LightLLM {dotted(tag.version)} predates GLM-4.7-Flash support (first tag v1.2.0;"
                    " use :main or >= v1.2.0): the engine will not load this model"
                ],
            )
        return "mla", "LightLLM stores the MLA latent for glm4_moe_lite (engines.md §4.6)", []

    def estimate(self, setup: MemorySetup) -> MemoryEstimate:
        if setup.mem_fraction is not None:
            fraction, source = setup.mem_fraction, "profile"
        else:
            fraction, source = DEFAULT_MEM_FRACTION, "LightLLM default"
        w = setup.weights
        terms = (
            term(
                "weights",
                w.total_gib,
                w.total_gib * (1 - w.relative_band),
                w.total_gib * (1 + w.relative_band),
                f"weights ({w.method}) {w.main_gib:.2f} GiB"
                + (f" + MTP draft {w.draft_gib:.2f} GiB" if w.draft_gib else ""),
            ),
            term("pre_profile_usage", *PRE_PROFILE_GIB, "C' before profile_size (mem_manager.py)"),
        )
        settings: dict[str, int | float | str | bool | None] = {
            "mem_fraction": fraction,
            "graph_max_batch_size": setup.cuda_graph_max_batch or DEFAULT_GRAPH_MAX_BATCH,
            "max_req_total_len": setup.context_length or setup.arch.max_position_embeddings,
        }
        return MemoryEstimate(fraction, source, setup.total_gib, terms, 1, settings)

    def reported_lines(
        self, setup: MemorySetup, estimate: MemoryEstimate, tokens: int, context_length: int
    ) -> list[str]:
        lines = [f"{tokens} is the profiled max_total_token_num with the mem_fraction {estimate.fraction:g}"]
        if tokens < context_length:
            lines.append(
                "check max len infer fail, you can try:1.Set the --mem_fraction or --max_total_token_num startup "
                "parameter to a smaller value.2.Set the --max_req_total_len to a smaller value.3.Set the "
                "--batch_max_tokens startup parameter to a smaller value."
            )
        return lines
