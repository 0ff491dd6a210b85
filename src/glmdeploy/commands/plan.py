"""``glmdeploy plan``: will the model fit, and with how much context (issue 2)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from glmdeploy.commands._common import JsonOutput, ProfileRef, check_launch, emit_json, handles_errors

if TYPE_CHECKING:
    from glmdeploy.planner import Plan


@handles_errors
def plan(
    profile: ProfileRef,
    context_length: Annotated[
        int | None,
        typer.Option(min=1, help="Context length to plan for, instead of the profile's."),
    ] = None,
    image: Annotated[
        str | None,
        typer.Option(help="Plan for another engine image (its tag decides MLA vs MHA and engine defaults)."),
    ] = None,
    attention: Annotated[
        str | None,
        typer.Option(
            metavar="mla|mha",
            help="Force the KV layout (mla or mha) instead of inferring it from the engine and image.",
        ),
    ] = None,
    json_output: JsonOutput = False,
) -> None:
    """Estimate per-GPU memory, KV pool and maximum context before renting anything.

    Exits 0 whenever a plan could be made, including when it does not fit: read "verdict"
    (or "fits" in --json). Unknown profile or bad option: exit 2.
    """
    from glmdeploy.errors import UsageError
    from glmdeploy.planner import plan_profile
    from glmdeploy.profiles import load_profile

    if attention not in (None, "mla", "mha"):
        raise UsageError(f"--attention: expected 'mla' or 'mha', got {attention!r}")
    from glmdeploy.profiles.model import with_overrides

    prof = load_profile(profile)
    check_launch(with_overrides(prof, context_length=context_length, image=image), force=None)
    result = plan_profile(
        prof,
        context_length=context_length,
        image=image,
        attention="mla" if attention == "mla" else "mha" if attention == "mha" else None,
    )
    if json_output:
        emit_json(result.model_dump(mode="json"))
        return
    print(render(result))


def _gib(value: float) -> str:
    return f"{value:.2f} GiB"


def render(result: Plan) -> str:
    """The plan as people read it."""
    b = result.per_gpu
    u = result.uncertainty
    gpu = result.gpu
    others = [c for c in dict.fromkeys(gpu.candidates) if c != gpu.label]
    lines = [
        f"plan for {result.profile}: {result.model} ({result.quant}) on {result.num_gpus}x {gpu.label}, "
        f"{result.engine} {result.image}, tensor parallel {result.tensor_parallel}"
        + (", MTP speculative" if result.speculative else ""),
        f"gpu:          {gpu.label}, {gpu.nvidia_smi_mib} MiB"
        + (f" (smallest of {', '.join([gpu.label, *others])})" if others else ""),
        f"attention:    {result.attention.upper()} ({result.attention_reason})",
        f"kv cache:     {result.kv_bytes_per_token:,} B/token per GPU, {result.kv_bytes_per_token_total:,} model-wide"
        f" ({result.kv_cache_dtype})",
        "per GPU:",
        f"  total       {_gib(b.total_gib)} (CUDA-visible)",
        f"  budget      {_gib(b.budget_gib)} = {b.memory_fraction:g} x total ({b.memory_fraction_source})",
        f"  weights     {_gib(b.weights_gib)} (from the {b.weights_method})"
        + (f", incl. MTP draft {_gib(b.draft_weights_gib)}" if b.draft_weights_gib else ""),
        f"  overhead    {_gib(b.overhead_gib)} ({u.overhead_gib_low:.2f} - {u.overhead_gib_high:.2f}), of which:",
        *[
            f"    {t.name:<22}{_gib(t.gib)} ({t.low_gib:.2f} - {t.high_gib:.2f})"
            for t in result.memory_terms
            if t.name != "weights"
        ],
        f"  KV pool     {_gib(b.kv_pool_gib)}",
        f"KV pool:      {result.kv_pool_tokens:,} tokens in blocks of {result.block_size} "
        f"(band {u.kv_pool_tokens_low:,} - {u.kv_pool_tokens_high:,} from the terms' ranges)",
        f"max context:  {result.max_context_tokens:,} tokens (model maximum {result.model_max_context:,})",
    ]
    if result.context_length is not None:
        if result.context_fits:
            lines.append(
                f"context:      {result.context_length:,} fits; "
                f"{result.max_concurrent_sequences:,} sequences of it at once"
            )
        else:
            lines.append(f"context:      {result.context_length:,} does NOT fit")
    else:
        lines.append(
            f"context:      not set in the profile; {result.max_concurrent_sequences:,} sequences of "
            f"{result.max_context_tokens:,} at once"
        )
    lines.append(f"verdict:      {result.verdict}: {result.reason}")
    lines += [f"engine says:  {line}" for line in result.engine_reported]
    lines += [f"warning:      {w}" for w in result.warnings]
    lines.append("Estimates: confirm with the engine's KV capacity log line after the first start.")
    return "\n".join(lines)
