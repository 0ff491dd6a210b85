"""JSON-ready views of domain objects, shared by several commands."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from glmdeploy.profiles.model import Profile


def profile_summary(profile: Profile) -> dict[str, Any]:
    from glmdeploy.smoke import profile_skips

    # The smoke checks' own rule: without the parser flags the engine cannot return tool calls/reasoning.
    skips = profile_skips(profile.model_dump(mode="json"))
    return {
        "name": profile.name,
        "description": profile.description,
        "engine": profile.engine.kind,
        "model": profile.model.repo,
        "served_model_name": profile.model.served_name,
        "gpu_names": list(profile.hardware.gpu_names),
        "num_gpus": profile.hardware.num_gpus,
        "context_length": profile.engine.context_length,
        "image": profile.engine.image,
        "max_price": profile.hardware.max_price,
        "source": profile.source.seed,
        "tools": "tools" not in skips,
        "reasoning": "reasoning" not in skips,
    }


def profile_detail(profile: Profile) -> dict[str, Any]:
    from glmdeploy.engines import get_engine
    from glmdeploy.onstart import display_command, launch_argv

    argv = launch_argv(profile)
    engine = get_engine(profile.engine.kind)
    return {
        **profile_summary(profile),
        "profile": profile.model_dump(mode="json"),
        "launch_argv": [str(a) for a in argv],
        "launch_command": display_command(argv),
        "auth": "engine" if engine.native_auth else "proxy",
        "reported_model_name": engine.reported_model_name(profile),
        "engine_check": engine_check(profile),
        "warnings": list(profile.warnings),
    }


def engine_check(profile: Profile) -> dict[str, Any]:
    """The launch check of ``glmdeploy.engines.checks``, as ``profiles show`` reports it."""
    from glmdeploy.engines.checks import check_launch
    from glmdeploy.engines.flags import version_text

    check = check_launch(profile)
    return {
        "engine": check.engine_label,
        "version": version_text(check.table.version) if check.table is not None else None,
        "version_known": check.version_known,
        "rejected": [{"flag": r.flag, "reason": r.reason} for r in check.rejected],
        "problems": [p for p in (check.flags_refusal, check.model_refusal, check.version_warning) if p],
    }
